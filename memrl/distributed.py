"""Data-parallel helpers for `torchrun ... -m memrl train` (docs/distributed.md).

Without torchrun (no WORLD_SIZE in the environment, or WORLD_SIZE=1) nothing here starts a process
group and every helper is the identity: rank 0 of a world of 1. The trainer calls the helpers only
where `world_size() > 1`, so the single-process path stays bit-identical.

Under torchrun, `init(device)` starts the default process group for the run's device (`choose_backend`):
cpu -> gloo only; cuda -> gloo for CPU tensors and NCCL for CUDA tensors ("cpu:gloo,cuda:nccl": tensor
collectives go by the tensor's device, object collectives through gloo), with this process pinned to
cuda:LOCAL_RANK (one GPU per process of a node).

Every helper is a collective: all ranks must call the same helpers in the same order.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as tdist

RANK_SEED_STRIDE = 1_000_003
"""Rank r seeds its envs and action sampling with seed + r * RANK_SEED_STRIDE (rank 0: the plain seed)."""


def launched() -> bool:
    """True when started by torchrun with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


_device: torch.device | None = None  # this rank's device as init() chose it (None: no process group of ours)


def choose_backend(device, local_rank: int, gpu_count: int) -> tuple[str, torch.device]:
    """(process-group backend, this rank's device) for a run on `device` (resolved: cpu or cuda). ValueError for
    mps, an explicit cuda:N, or a LOCAL_RANK without its own GPU."""
    device = torch.device(device)
    if device.type == "cpu":
        return "gloo", torch.device("cpu")
    if device.type != "cuda":
        raise ValueError(f"distributed training supports cpu (gloo) and cuda (NCCL) devices, not {device.type}")
    if device.index is not None:
        raise ValueError(f"under torchrun each process uses cuda:LOCAL_RANK; pass --device cuda, not {device}")
    if local_rank >= gpu_count:
        raise ValueError(f"LOCAL_RANK {local_rank} has no GPU of its own: this machine has {gpu_count} CUDA "
                         f"device(s); start at most {gpu_count} processes per node (torchrun --nproc-per-node "
                         f"<= {gpu_count}) or train on the CPU with --device cpu")
    return "cpu:gloo,cuda:nccl", torch.device("cuda", local_rank)


def init(device="auto") -> bool:
    """Start the process group for `device` (auto, cpu, cuda; resolved like Config.device) when launched by
    torchrun with WORLD_SIZE > 1. Returns whether a process group is running. ValueError if it is already
    running for another device."""
    global _device
    if not launched():
        return tdist.is_initialized()
    from .config import resolve_device
    backend, mine = choose_backend(resolve_device(str(device)), int(os.environ.get("LOCAL_RANK", "0")),
                                   torch.cuda.device_count())
    if tdist.is_initialized():
        if _device is not None and mine != _device:
            raise ValueError(f"the process group was started for {_device}, not {mine}")
        return True
    if mine.type == "cuda":
        torch.cuda.set_device(mine)
    tdist.init_process_group(backend=backend)
    _device = mine
    return True


def teardown(wait: bool = True) -> None:
    """Wait for every rank (wait=True), then destroy the process group. Without the barrier a rank that finishes
    first can tear gloo down while its last send to rank 0 (the final checkpoint gather) is in flight, and abort.
    Pass wait=False on an error path: a rank that failed alone must exit, not wait for the others."""
    global _device
    if tdist.is_initialized():
        if wait:
            tdist.barrier()
        tdist.destroy_process_group()
    _device = None


def world_size() -> int:
    return tdist.get_world_size() if tdist.is_initialized() else 1


def rank() -> int:
    return tdist.get_rank() if tdist.is_initialized() else 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0")) if tdist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def local_device(device: torch.device) -> torch.device:
    """This rank's device for a run on `device`: cuda -> cuda:LOCAL_RANK when distributed, as init() chose it
    (choose_backend); ValueError for mps, or for cuda in a process group started for the CPU (no NCCL)."""
    if world_size() == 1:
        return device
    mine = choose_backend(device, local_rank(), torch.cuda.device_count())[1]
    if _device is not None and mine.type == "cuda" and mine != _device:
        raise ValueError(f"the process group was started for {_device} (no NCCL), so this run cannot use {mine}; "
                         f"give memrl train the same --device as the process group")
    return mine


def sum_values(*values: float, device="cpu") -> list[float]:
    """Sum python numbers over ranks (float64, so integer counts stay exact and equal on all ranks)."""
    if world_size() == 1:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    tdist.all_reduce(t)
    return t.tolist()


def mean_values(*values: float, device="cpu") -> list[float]:
    """Average python numbers over ranks."""
    w = world_size()
    return [v / w for v in sum_values(*values, device=device)]


def all_true(flag: bool, device="cpu") -> bool:
    """True on every rank iff `flag` is True on every rank."""
    return sum_values(0.0 if flag else 1.0, device=device)[0] == 0.0


def global_mean_std(x: torch.Tensor, per_row: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and unbiased std of the union of every rank's `x` (any shape), equal on all ranks; with per_row,
    of each row x[i] separately (shape (G,) results), still in one all-reduce.

    Accumulated in float64 from (count, sum, sum of squares) so the result does not depend on the split.
    """
    x64 = x.detach().double()
    rows = x64.reshape(x64.shape[0] if per_row else 1, -1)  # (G, elements per row)
    s = torch.stack([torch.full_like(rows[:, 0], rows.shape[1]), rows.sum(1), (rows * rows).sum(1)], 1)  # (G, 3)
    if world_size() > 1:
        tdist.all_reduce(s)
    n, total, sq = s.unbind(1)
    mean = total / n
    var = (sq - n * mean * mean).clamp_min(0) / (n - 1).clamp_min(1)
    if not per_row:
        mean, var = mean[0], var[0]
    return mean.to(x.dtype), var.sqrt().to(x.dtype)


def average_gradients(params, local_bad: torch.Tensor | float = 0.0) -> torch.Tensor:
    """Average the .grad of `params` over ranks with one flat all-reduce (in place).

    Parameters whose grad is None (on every rank alike: the models are identical) are skipped.
    `local_bad` (1 if e.g. this rank's loss was not finite; a 0-d tensor or a number) rides along in the same
    buffer; returns the number of ranks that reported it as a 0-d tensor on the gradients' device (no host
    sync), equal on all ranks, so all ranks can stop together without another collective.
    """
    grads = [p.grad for p in params if p.grad is not None]
    flag = torch.as_tensor(local_bad, dtype=grads[0].dtype, device=grads[0].device).reshape(1)
    flat = torch.cat([g.reshape(-1) for g in grads] + [flag])  # (sum of numels + 1,)
    tdist.all_reduce(flat)
    w = world_size()
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g) / w)
        offset += g.numel()
    return flat[-1].round()


def broadcast_params(module: torch.nn.Module) -> None:
    """Copy rank 0's parameters and buffers to every rank (a guard on top of identical seeding)."""
    if world_size() == 1:
        return
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            tdist.broadcast(t.data, src=0)


def broadcast_object(obj):
    """Rank 0's `obj` on every rank (picklable objects)."""
    if world_size() == 1:
        return obj
    box = [obj]
    tdist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(obj) -> list | None:
    """[obj of rank 0, obj of rank 1, ...] on rank 0, None elsewhere."""
    if world_size() == 1:
        return [obj]
    out = [None] * world_size() if is_main() else None
    tdist.gather_object(obj, out, dst=0)
    return out
