"""The `triton` SSD backend: our own Triton kernels, registered as torch.library custom ops.

Forward: one launch (triton_fwd.ssd_fwd_kernel), the inter-chunk recurrence carried in registers.
Backward: two launches (a state pass that stores the state entering each chunk, then a reverse sweep
that carries the state gradient; triton_bwd) plus small PyTorch sums over heads / batch.
Runs on CUDA tensors, and on CPU tensors under TRITON_INTERPRET=1 (tests).

    chunk_scan(x (B, L, H, P), dt (B, L, H), A (H,), B/C (B, L, G, N), chunk_size, D (H,)|(H, P), z like x,
               dt_bias (H,), initial_states (B, H, P, N), seq_idx (B, L), dt_softplus, dt_min, dt_max)
        -> (y (B, L, H, P) in x.dtype, final_states (B, H, P, N) fp32)

chunk_size only bounds the kernels' own chunk length Q (a power of two in [16, 64]); the result does
not depend on it.
"""
from __future__ import annotations

import math

import torch

from .custom_op import make_ssd_op
from .triton_bwd import ssd_bwd_kernel
from .triton_common import dot_precision, pow2_at_least, upcast_dots
from .triton_fwd import ssd_fwd_kernel

__all__ = ["chunk_scan", "ssd_fwd", "ssd_bwd"]

MAX_Q = 64


def kernel_chunk(chunk_size: int, seqlen: int) -> int:
    """The chunk length the kernels use: a power of two in [16, MAX_Q], <= chunk_size where possible."""
    q = 1 << (max(int(chunk_size), 1).bit_length() - 1)  # largest power of two <= chunk_size
    q = min(q, MAX_Q, pow2_at_least(seqlen))
    return max(q, 16)


def _flags(D, z, dt_bias, seq_idx, dt_softplus, dt_min, dt_max):
    return dict(HAS_D=D is not None, HAS_Z=z is not None, HAS_DTB=dt_bias is not None,
                HAS_SEQ=seq_idx is not None, SOFTPLUS=bool(dt_softplus),
                CLAMP=(float(dt_min), float(dt_max)) != (0.0, math.inf))


def _common_args(x, dt, B, C, D, z, seq_idx):
    """Strides shared by both kernels; absent tensors get zero strides (their loads are compiled out)."""
    zs = z.stride() if z is not None else (0, 0, 0, 0)
    ss = seq_idx.stride() if seq_idx is not None else (0, 0)
    if D is None:
        ds = (0, 0)
    elif D.dim() == 1:
        ds = (D.stride(0), 0)  # (H,) broadcast over P
    else:
        ds = D.stride()
    return [*x.stride(), *dt.stride(), *B.stride(), *C.stride(), *zs], ss, ds


def ssd_fwd(x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states, seq_idx, dt_softplus, dt_min, dt_max,
            states=None):
    """Forward launch. With `states` (B*H, nchunks + 1, P, N) fp32 given, run the state pass instead
    (no y; the state entering each chunk and the final one are written there). Returns (y or None, final)."""
    b, L, h, p = x.shape
    g, n = B.shape[2], B.shape[3]
    q = kernel_chunk(chunk_size, L)
    A = A.contiguous()
    dt_bias = dt_bias.contiguous() if dt_bias is not None else None
    init = initial_states.contiguous() if initial_states is not None else None
    final = torch.empty((b, h, p, n), dtype=torch.float32, device=x.device)
    compute_y = states is None
    y = torch.empty((b, L, h, p), dtype=x.dtype, device=x.device) if compute_y else None
    strides, ss, ds = _common_args(x, dt, B, C, D, z, seq_idx)
    ys = y.stride() if y is not None else (0, 0, 0, 0)
    dummy = x
    grid = lambda meta: (triton_cdiv(p, meta["BP"]), b * h)  # noqa: E731
    ssd_fwd_kernel[grid](
        x, dt, A, B, C, _or(D, dummy), _or(z, dummy), _or(dt_bias, dummy), _or(init, dummy), _or(seq_idx, dummy),
        _or(y, dummy), final, _or(states, final),
        L, h, p, n, h // g, float(dt_min), float(dt_max),
        *strides, *ys, *ss, *ds,
        HAS_INIT=init is not None, COMPUTE_Y=compute_y, STORE_STATES=not compute_y,
        Q=q, BN=pow2_at_least(n), DOT_PREC=dot_precision(x.dtype), UPCAST=upcast_dots(x.dtype),
        **_flags(D, z, dt_bias, seq_idx, dt_softplus, dt_min, dt_max),
    )
    return y, final


def ssd_bwd(dy, dfinal, x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states, seq_idx, dt_softplus,
            dt_min, dt_max):
    """Gradients (dx, ddt, dA, dB, dC, dD, dz, ddt_bias, dinitial_states); None where the input is None."""
    b, L, h, p = x.shape
    g, n = B.shape[2], B.shape[3]
    q = kernel_chunk(chunk_size, L)
    nchunks = -(-L // q)
    dev = x.device
    states = torch.empty((b * h, nchunks + 1, p, n), dtype=torch.float32, device=dev)
    ssd_fwd(x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states, seq_idx, dt_softplus, dt_min, dt_max,
            states=states)

    dy = dy.contiguous() if dy.stride(-1) != 1 else dy
    dx = torch.empty((b, L, h, p), dtype=x.dtype, device=dev)
    ddt = torch.empty((b, L, h), dtype=torch.float32, device=dev)
    dB_h = torch.empty((b, L, h, n), dtype=torch.float32, device=dev)  # per head, summed over the group below
    dC_h = torch.empty((b, L, h, n), dtype=torch.float32, device=dev)
    dz = torch.empty((b, L, h, p), dtype=z.dtype, device=dev) if z is not None else None
    dinit = torch.empty((b, h, p, n), dtype=torch.float32, device=dev)
    dA_bh = torch.empty((b * h,), dtype=torch.float32, device=dev)
    dD_bh = torch.empty((b * h, p), dtype=torch.float32, device=dev)
    dfin = dfinal.contiguous() if dfinal is not None else None
    strides, ss, ds = _common_args(x, dt, B, C, D, z, seq_idx)
    ssd_bwd_kernel[(b * h,)](
        x, dt, A.contiguous(), B, C, _or(D, x), _or(z, x), _or(dt_bias, x), _or(seq_idx, x), dy, _or(dfin, dinit),
        states,
        dx, ddt, dB_h, dC_h, _or(dz, dx), dinit, dA_bh, dD_bh,
        L, h, p, n, h // g, float(dt_min), float(dt_max),
        *strides, *dy.stride(), *ss, *ds,
        HAS_DFINAL=dfin is not None, Q=q, BP=pow2_at_least(p), BN=pow2_at_least(n), DOT_PREC=dot_precision(x.dtype), UPCAST=upcast_dots(x.dtype),
        **_flags(D, z, dt_bias, seq_idx, dt_softplus, dt_min, dt_max),
    )
    dB = dB_h.view(b, L, g, h // g, n).sum(3) if h != g else dB_h  # (B, L, G, N)
    dC = dC_h.view(b, L, g, h // g, n).sum(3) if h != g else dC_h
    dA = dA_bh.view(b, h).sum(0)
    dD = None
    if D is not None:
        dD = dD_bh.view(b, h, p).sum(0)
        dD = dD.sum(1) if D.dim() == 1 else dD
    ddt_bias = ddt.sum((0, 1)) if dt_bias is not None else None
    dinit_out = dinit if initial_states is not None else None
    return dx, ddt, dA, dB, dC, dD, dz, ddt_bias, dinit_out


def triton_cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _or(t, default):
    return default if t is None else t


_fwd_op, _bwd_op = make_ssd_op("triton", lambda *a: ssd_fwd(*a), ssd_bwd, device_types=None)


def chunk_scan(x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None, initial_states=None, seq_idx=None,
               dt_softplus=False, dt_min=0.0, dt_max=math.inf):
    """The backend entry point (see the module docstring); differentiable in every tensor input."""
    return _fwd_op(x, dt, A, B, C, int(chunk_size), D, z, dt_bias, initial_states, seq_idx, bool(dt_softplus),
                   float(dt_min), float(dt_max))
