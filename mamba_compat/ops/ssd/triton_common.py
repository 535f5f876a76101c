"""Helpers shared by the Triton SSD and decode kernels: interpreter detection, autotune configs, sizes."""
from __future__ import annotations

import os

import triton
import triton.language as tl


def interpreting() -> bool:
    """True when Triton runs kernels on the CPU (TRITON_INTERPRET=1, read when kernels are decorated)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def autotune_configs(bp: bool = False, decode: bool = False, bwd: bool = False, light: bool = False) -> list:
    """Configs to autotune over (few: every config is compiled on first use). One config under the
    interpreter (multi-config autotune needs a GPU) and when MAMBA_COMPAT_TRITON_AUTOTUNE=0.

    bp: also tune BP (the head-dim block of the forward and of the sequential state passes).
    light: a sequential pass with one matmul per chunk (more programs pay: small BP first).
    """
    single = interpreting() or os.environ.get("MAMBA_COMPAT_TRITON_AUTOTUNE", "1") == "0"
    if decode:  # BP: rows of the head dim per program
        if single:
            return [triton.Config({"BP": 16}, num_warps=4, num_stages=1)]
        return [triton.Config({"BP": bp}, num_warps=w, num_stages=1)
                for bp, w in ((4, 1), (8, 2), (8, 4), (16, 4), (32, 4), (64, 4), (64, 8))]
    if single:
        warps = 4 if (interpreting() or not bwd) else 8
        return [triton.Config({"BP": 16 if (interpreting() or light) else 32} if bp else {}, num_warps=warps,
                              num_stages=1 if interpreting() else 2)]
    if bp:
        return [triton.Config({"BP": v}, num_warps=4, num_stages=2) for v in (16, 32, 64)]
    return [triton.Config({}, num_warps=w, num_stages=1) for w in (4, 8)]


def pow2_at_least(n: int, lo: int = 16) -> int:
    return max(lo, triton.next_power_of_2(int(n)))


def dot_precision(dtype, backward: bool = False) -> str:
    """Precision of fp32 tl.dot operands. Default: tf32 tensor cores forward, tf32x3 (about fp32 accuracy,
    three tf32 products) backward, where gradients such as dA sum many terms; exact under the interpreter.
    MAMBA_COMPAT_TRITON_FP32=ieee|tf32x3|tf32 forces one for both directions (fp32 inputs only; 16-bit operands
    are multiplied in their own dtype whatever the knob says)."""
    import torch

    if dtype == torch.float64 or interpreting():
        return "ieee"
    forced = os.environ.get("MAMBA_COMPAT_TRITON_FP32")
    if forced and dtype == torch.float32:
        return forced
    return "tf32x3" if backward else "tf32"


def env_int(name: str, default: int) -> int:
    """An integer tuning knob from the environment (read at call time)."""
    return int(os.environ.get(name, default))


def upcast_dots(dtype) -> bool:
    """The Triton 3.7.1 interpreter multiplies bf16 tl.dot operands wrongly (seen: errors ~1e10); under
    the interpreter bf16 operands are upcast to fp32 (after the same bf16 rounding the GPU path does)."""
    import torch

    return interpreting() and dtype == torch.bfloat16


@triton.jit
def mm(a, b, PREC: tl.constexpr, UPCAST: tl.constexpr):
    """tl.dot with fp32 accumulation; UPCAST multiplies in fp32 (interpreter workaround, see upcast_dots)."""
    if UPCAST:
        c = tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    else:
        c = tl.dot(a, b, input_precision=PREC)
    return c


@triton.jit
def program_tile(pid_bh, pid_p, H, HPG, P, N, BP: tl.constexpr, BN: tl.constexpr):
    """Indices of a program over (block pid_p of BP head-dim rows, pid_bh = b*H + h): batch b, head h, group g,
    offs_p (BP,), offs_n (BN,), their masks, and the (BP, BN) mask and offsets within one (P, N) state."""
    b = pid_bh // H
    h = pid_bh % H
    g = h // HPG
    offs_p = pid_p * BP + tl.arange(0, BP)
    offs_n = tl.arange(0, BN)
    pmask = offs_p < P
    nmask = offs_n < N
    pn_mask = pmask[:, None] & nmask[None, :]
    pn_offs = offs_p[:, None] * N + offs_n[None, :]
    return b, h, g, offs_p, offs_n, pmask, nmask, pn_mask, pn_offs


@triton.jit
def head_scalars(A_ptr, dtb_ptr, h, HAS_DTB: tl.constexpr):
    """(A, dt_bias) of head h as fp32 scalars (dt_bias 0 without one)."""
    A = tl.load(A_ptr + h).to(tl.float32)
    dtb = 0.0
    if HAS_DTB:
        dtb = tl.load(dtb_ptr + h).to(tl.float32)
    return A, dtb
