"""Helpers shared by the Triton SSD and decode kernels: interpreter detection, autotune configs, sizes."""
from __future__ import annotations

import os

import triton


def interpreting() -> bool:
    """True when Triton runs kernels on the CPU (TRITON_INTERPRET=1, read when kernels are decorated)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def autotune_configs(bp: bool = False, decode: bool = False) -> list:
    """Configs to autotune over. One config under the interpreter: multi-config autotune needs a GPU.

    bp: also tune BP (the head-dim block of the forward / state pass).
    """
    if interpreting():
        return [triton.Config({"BP": 16} if bp else {}, num_warps=4, num_stages=1)]
    out = []
    if decode:
        for w in (2, 4, 8):
            out.append(triton.Config({}, num_warps=w, num_stages=1))
        return out
    for bpv in ((32, 64) if bp else (None,)):
        for w in (4, 8):
            for s in (1, 2, 3):
                out.append(triton.Config({"BP": bpv} if bpv else {}, num_warps=w, num_stages=s))
    return out


def pow2_at_least(n: int, lo: int = 16) -> int:
    return max(lo, triton.next_power_of_2(int(n)))


def dot_precision(dtype) -> str:
    """fp32 operands: tf32 tensor cores on the GPU by default (MAMBA_COMPAT_TRITON_FP32=ieee|tf32x3|tf32 to
    choose); exact under the interpreter."""
    import torch

    if dtype == torch.float64 or interpreting():
        return "ieee"
    return os.environ.get("MAMBA_COMPAT_TRITON_FP32", "tf32")
