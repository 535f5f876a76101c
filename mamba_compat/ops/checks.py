"""Argument checks shared by the ops: every bad call raises ValueError/TypeError naming the argument
and the shapes seen, before any backend runs."""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _shape(t) -> str:
    return "None" if t is None else str(tuple(t.shape))


def require_tensor(name: str, t, *, optional: bool = False, floating: bool = True) -> None:
    if t is None:
        if optional:
            return
        raise TypeError(f"{name} must be a torch.Tensor, got None")
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if floating and t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be a floating tensor (float16/bfloat16/float32/float64), got dtype {t.dtype} "
                        f"with shape {_shape(t)}")


def require_shape(name: str, t: torch.Tensor, expected: Sequence[int], meaning: str) -> None:
    if tuple(t.shape) != tuple(expected):
        raise ValueError(f"{name} must have shape {meaning} = {tuple(expected)}, got {_shape(t)}")


def require_rank(name: str, t: torch.Tensor, ranks: Sequence[int], meaning: str) -> None:
    if t.dim() not in ranks:
        raise ValueError(f"{name} must be {meaning} (rank {' or '.join(map(str, ranks))}), got shape {_shape(t)}")


def require_same_device(named: dict) -> None:
    devices = {n: t.device for n, t in named.items() if t is not None}
    if len(set(devices.values())) > 1:
        seen = ", ".join(f"{n} on {d}" for n, d in devices.items())
        raise ValueError(f"all tensors must be on one device; got {seen}")


def require_same_dtype(named: dict) -> None:
    dtypes = {n: t.dtype for n, t in named.items() if t is not None}
    if len(set(dtypes.values())) > 1:
        seen = ", ".join(f"{n}: {d}" for n, d in dtypes.items())
        raise TypeError(f"x, B, C (and z) must share one dtype; got {seen}")


def check_seq_idx(seq_idx: Optional[torch.Tensor], batch: int, seqlen: int) -> None:
    if seq_idx is None:
        return
    if not isinstance(seq_idx, torch.Tensor):
        raise TypeError(f"seq_idx must be a torch.Tensor of integers, got {type(seq_idx).__name__}")
    if seq_idx.dtype.is_floating_point or seq_idx.dtype.is_complex or seq_idx.dtype == torch.bool:
        raise TypeError(f"seq_idx must be an integer tensor (int32/int64), got dtype {seq_idx.dtype}")
    require_shape("seq_idx", seq_idx, (batch, seqlen), "(batch, seqlen)")


def check_dt_limit(dt_limit) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in dt_limit)
    except (TypeError, ValueError):
        raise TypeError(f"dt_limit must be a pair of numbers (min, max), got {dt_limit!r}") from None
    if math.isnan(lo) or math.isnan(hi) or math.isinf(lo) or (math.isinf(hi) and hi < 0):
        raise ValueError(f"dt_limit must be finite (max may be +inf), got {dt_limit!r}")
    if lo > hi:
        raise ValueError(f"dt_limit must satisfy min <= max, got {dt_limit!r}")
    return lo, hi


def check_chunk_size(chunk_size) -> int:
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    return chunk_size


def check_groups(nheads: int, ngroups: int, what: str) -> None:
    if ngroups < 1 or nheads % ngroups != 0:
        raise ValueError(f"nheads ({nheads}) must be divisible by ngroups ({ngroups}) of {what}")
