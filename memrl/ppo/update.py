"""The PPO minibatch step: gather the minibatch, evaluate, loss, backward, clip, optimizer step.

    updater = MinibatchUpdater(model, optimizer, cfg, use_cuda_graph=True)
    updater.begin(data, gate_coef)          # the update's rollout data (all envs), statistics zeroed
    for idx in minibatches: updater.step(idx)
    stats = updater.finish()                # summed terms, minibatch count, first non-finite minibatch

One code path on every device: `_body` computes one minibatch's loss and gradients from static buffers (the
rollout data, the minibatch's env indices) and accumulates its statistics into buffers on the device;
`optimizer.step()` follows it. Eagerly (CPU, MPS, use_cuda_graph=False, a controller whose sequence pass
branches on the data, or data parallel) the body simply runs. On CUDA the body is captured once per rollout
shape as a CUDA graph and replayed for each minibatch: at thousands of envs the update is otherwise bound by
the host launching a few thousand small kernels per minibatch.

What a graph needs, and how it is met (as in rollout.py):
- static memory: the rollout data is copied into buffers once per update, the minibatch's indices once per
  step; statistics and the finite checks accumulate in device buffers, read after the update.
- gradients: the body zeroes the .grad tensors in place (zero_grad(set_to_none=False)) and backward
  accumulates into them, so they are static buffers too; after a replay they are pointed at again before the
  optimizer step (anything may have set .grad to None between replays).
- no host syncs and no compilation inside: the loss is pure (loss.py); the first step of a new shape runs
  eagerly on a side stream (kernels compile and autotune) and counts as a real step; the second is captured.
- the optimizer step runs outside the graph (torch's Adam, fused on CUDA: one multi-tensor launch): the update's
  numerics are the eager update's, and checkpoints, learning-rate changes and resumes need nothing special.
"""
from __future__ import annotations

import torch

from .. import distributed as dist
from .loss import TERMS, ppo_loss

STATS = (*TERMS, "grad_norm")
RECORDS = ("actions", "logp", "adv", "returns", "values")


def _shape_key(data: dict) -> tuple:
    return tuple((k, tuple(v.shape), v.dtype) for k, v in sorted(data["state"].items())) + tuple(
        (k, tuple(data[k].shape), data[k].dtype) for k in ("obs", "reset", *RECORDS)) + (data["skip"],)


def _clone_data(data: dict) -> dict:
    return {k: ({s: t.clone() for s, t in v.items()} if k == "state" else v.clone() if torch.is_tensor(v) else v)
            for k, v in data.items()}


def _copy_data(dst: dict, src: dict) -> None:
    for k, v in src.items():
        if k == "state":
            for s, t in v.items():
                dst["state"][s].copy_(t)
        elif torch.is_tensor(v):
            dst[k].copy_(v)


class MinibatchUpdater:
    """Minibatch steps of PPO for `model` with `optimizer`; see the module docstring."""

    def __init__(self, model, optimizer, cfg, use_cuda_graph: bool = True, world: int = 1):
        self.model, self.optimizer, self.cfg, self.world = model, optimizer, cfg, world
        self.params = list(model.parameters())
        self.device = self.params[0].device
        self.use_cuda_graph = bool(use_cuda_graph) and self.graph_unavailable(model, self.device, world) is None
        self._graphs = {}  # rollout shape key -> static buffers (and, once captured, "graph")
        self.captures = 0  # graphs captured so far (for tests and benchmarks)
        self.sb = None  # the current update's buffers

    @staticmethod
    def graph_unavailable(model, device, world: int):
        """Why the update cannot be graphed here (a sentence), or None."""
        if device.type != "cuda":
            return f"eager on {device.type} (CUDA graphs need CUDA)"
        if world > 1:
            return "eager under data parallel (the gradient all-reduce runs between backward and the step)"
        if not getattr(model, "graph_safe", False):
            return (f"eager for the {type(model.controller).__name__} (its sequence pass branches on where "
                    "episodes reset)")
        return None

    # ------------------------------------------------------------------------------------------------ body
    def _body(self, sb: dict) -> None:
        """One minibatch's loss and gradients (sb["idx"] into sb["data"]); its statistics into sb's buffers."""
        cfg, d, idx = self.cfg, sb["data"], sb["idx"]
        out = self.model.evaluate(d["obs"][idx], {k: v[idx] for k, v in d["state"].items()}, d["reset"][idx])
        batch = {k: d[k][idx] for k in RECORDS}
        norm = (sb["adv_mean"], sb["adv_std"]) if self.world > 1 else (None, None)
        loss, terms = ppo_loss(out, d["skip"], batch, self.model.action_dist, cfg, sb["gate_coef"], *norm)
        self.optimizer.zero_grad(set_to_none=False)  # the .grad tensors stay put: a graph's static buffers
        loss.backward()
        loss_bad = (~torch.isfinite(loss.detach())).float()
        if self.world > 1:  # mean of the ranks' gradients = gradient of the global minibatch's mean loss
            loss_bad = dist.average_gradients(self.params, local_bad=loss_bad)  # ranks reporting a bad loss
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm)
        mb_bad = (loss_bad > 0) | ~torch.isfinite(grad_norm)
        sb["first_bad"].copy_(torch.where((sb["first_bad"] < 0) & mb_bad, sb["count"], sb["first_bad"]))
        sb["count"].add_(1)
        for k in TERMS:
            sb["stats"][k].add_(terms[k].detach())
        sb["stats"]["grad_norm"].add_(grad_norm)
        sb["last"].copy_(torch.stack([terms[k].detach() for k in ("pg_loss", "v_loss", "entropy", "gate_loss")]))

    # ------------------------------------------------------------------------------------------------ graphs
    def _buffers(self, data: dict, static: bool) -> dict:
        """Buffers for updates on data of this shape: static (graphed) ones hold a copy of the data."""
        dev = self.device
        zero = lambda dtype=torch.float32: torch.zeros((), dtype=dtype, device=dev)  # noqa: E731
        mb = data["obs"].shape[0] // self.cfg.num_minibatches
        return {"data": _clone_data(data) if static else data, "idx": torch.zeros(mb, dtype=torch.long, device=dev),
                "gate_coef": zero(), "adv_mean": zero(), "adv_std": zero(), "stats": {k: zero() for k in STATS},
                "count": zero(torch.long), "first_bad": zero(torch.long), "last": torch.zeros(4, device=dev)}

    def _warmup(self, sb: dict) -> None:
        """The first step of a shape, eagerly, on a side stream (compiles and autotunes the kernels)."""
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            self._body(sb)
        torch.cuda.current_stream(self.device).wait_stream(side)
        sb["warm"] = True

    def _make_graph(self, sb: dict):
        """Capture the body on static buffers sb as a CUDA graph (anything with .replay())."""
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._body(sb)
        return graph

    # ------------------------------------------------------------------------------------------------ steps
    def begin(self, data: dict, gate_coef: float) -> None:
        """Start an update on `data`: {"obs" (N, S, O), "reset" (N, S), "state" {name: (N, ...)} before step 0,
        "skip" (burn-in steps at the start of each sequence, no loss), and the records "actions", "logp", "adv",
        "returns", "values" (N, T) of the S - skip steps after it}."""
        key = _shape_key(data)
        sb = self._graphs.get(key)
        if sb is None:  # new buffers (static ones start as a copy of data)
            self._graphs.clear()  # a finished curriculum stage: free its graph's pool
            sb = self._graphs[key] = self._buffers(data, static=self.use_cuda_graph)
        elif self.use_cuda_graph:
            _copy_data(sb["data"], data)
        else:
            sb["data"] = data
        self.sb = sb
        sb["gate_coef"].fill_(gate_coef)
        for v in (*sb["stats"].values(), sb["count"]):
            v.zero_()
        sb["first_bad"].fill_(-1)
        self.steps = 0

    def step(self, idx: torch.Tensor, adv_mean=None, adv_std=None) -> None:
        """One minibatch: the envs `idx` (mb,) of the data. adv_mean, adv_std: 0-dim normalisation statistics
        of the global minibatch (data parallel only)."""
        sb = self.sb
        sb["idx"].copy_(idx)
        if adv_mean is not None:
            sb["adv_mean"].copy_(adv_mean)
            sb["adv_std"].copy_(adv_std)
        if not self.use_cuda_graph:
            self._body(sb)
        elif not sb.get("warm"):
            self._warmup(sb)
        else:
            if "graph" not in sb:
                sb["graph"] = self._make_graph(sb)
                sb["grads"] = [p.grad for p in self.params]
                self.captures += 1
            sb["graph"].replay()
            for p, g in zip(self.params, sb["grads"]):
                p.grad = g
        self.optimizer.step()
        self.steps += 1

    def finish(self) -> dict:
        """{"stats": summed terms (0-dim tensors), "steps", "first_bad" (0-dim: -1 or the first minibatch with a
        non-finite loss or gradient norm), "last": (pg_loss, v_loss, entropy, gate_loss) of the last minibatch}."""
        sb = self.sb
        return {"stats": sb["stats"], "steps": self.steps, "first_bad": sb["first_bad"], "last": sb["last"]}
