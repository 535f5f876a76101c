"""The `metal` SSD backend: our MSL kernels (csrc/metal) through the `mamba_compat._metal` extension,
registered as torch.library custom ops for MPS tensors with autograd (custom_op.make_ssd_op).

Forward: 5 dispatches (dt/cumsum scan, C.B^T per chunk, chunk states, inter-chunk pass, output), one
threadgroup per chunk tile; x/B/C/z stay in their dtype (float32/float16/bfloat16), arithmetic and
states are fp32. Backward: the forward pieces recomputed, then 7 more dispatches (all fp32) whose raw
per-element gradients are summed here (`reduce_grads`). The kernels use their own chunk length
(`_metal.chunk_len()`, 64); chunk_size does not change the result.

    chunk_scan(x (B, L, H, P), dt (B, L, H), A (H,), B/C (B, L, G, N), chunk_size, D (H,)|(H, P), z like x,
               dt_bias (H,), initial_states (B, H, P, N), seq_idx (B, L), dt_softplus, dt_min, dt_max)
        -> (y (B, L, H, P) in x.dtype, final_states (B, H, P, N) fp32)
"""
from __future__ import annotations

import math
import warnings
from typing import Optional

import torch

from .custom_op import make_ssd_op

try:
    from ... import _metal
except ImportError as e:  # the module imports on Linux too (tests reach reduce_grads); the ops need _metal
    _metal = None
    _IMPORT_ERROR = e

__all__ = ["chunk_scan", "ssd_fwd", "ssd_bwd", "reduce_grads"]


def _ext():
    if _metal is None:
        raise ImportError(f"the Metal extension mamba_compat._metal is not built ({_IMPORT_ERROR}); on macOS run "
                          "`pip install -e . --no-build-isolation` with the Xcode command-line tools installed")
    return _metal


def _f32(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return None if t is None else t.to(torch.float32).contiguous()


_BFLOAT_OK: dict = {}  # id(extension) -> whether its kernels compile for bfloat here
_WARNED_FP32: set = set()  # input dtypes already warned about (one warning per dtype and process)


def _warn_fp32_once(dtype: torch.dtype, why: str) -> None:
    if dtype in _WARNED_FP32:
        return
    _WARNED_FP32.add(dtype)
    warnings.warn(f"mamba_compat metal backend: {dtype} inputs are converted to float32 and the scan computes in "
                  f"float32 ({why}); the output is cast back to {dtype}. Memory traffic is that of float32.",
                  RuntimeWarning, stacklevel=4)


def _in_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the kernels read x/B/C/z in: float32/float16 natively, bfloat16 where the GPU's Metal has
    bfloat (macOS 14+); else float32, with a one-time warning saying so."""
    if dtype in (torch.float32, torch.float16):
        return dtype
    ext = _ext()
    if dtype == torch.bfloat16:
        if id(ext) not in _BFLOAT_OK:
            _BFLOAT_OK[id(ext)] = bool(ext.supports_dtype("bfloat16"))
        if _BFLOAT_OK[id(ext)]:
            return dtype
        _warn_fp32_once(dtype, "this Metal has no bfloat: it needs macOS 14 / Metal 3.1")
    else:
        _warn_fp32_once(dtype, "the kernels read float32, float16 or bfloat16")
    return torch.float32


def _common(x, dt, A, B, C, D, z, dt_bias, initial_states, seq_idx, dt_min, dt_max, in_dtype):
    h, p = x.shape[2], x.shape[3]
    cast = lambda t: None if t is None else t.to(in_dtype).contiguous()  # noqa: E731
    D2 = None if D is None else _f32(D.reshape(h, -1).expand(h, p))  # (H, P)
    seq = None if seq_idx is None else seq_idx.to(torch.int32).contiguous()
    limit = (float(dt_min), float(dt_max)) != (0.0, math.inf)
    dmax = float(dt_max) if math.isfinite(dt_max) else 3.0e38
    return (cast(x), _f32(dt), _f32(A), cast(B), cast(C), D2, cast(z), _f32(dt_bias), _f32(initial_states), seq,
            limit, float(dt_min), dmax)


def ssd_fwd(x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states, seq_idx, dt_softplus, dt_min, dt_max):
    """Forward on MPS tensors -> (y in x.dtype, final_states fp32)."""
    ext = _ext()
    xx, dtt, AA, BB, CC, DD, zz, db, init, seq, limit, lo, hi = _common(
        x, dt, A, B, C, D, z, dt_bias, initial_states, seq_idx, dt_min, dt_max, _in_dtype(x.dtype))
    y, final = ext.ssd_fwd(xx, dtt, AA, BB, CC, DD, zz, db, init, seq, bool(dt_softplus), limit, lo, hi)
    return y.to(x.dtype), final


def reduce_grads(raw, *, ngroups: int, D_shape, has_z: bool, has_bias: bool, has_init: bool):
    """The extension's raw gradients -> (dx, ddt, dA, dB, dC, dD, dz, ddt_bias, dinitial_states).

    raw = (dx (b, L, H, P), ddt (b, L, H), dA_part (b, H, nchunks, Q), dB_h / dC_h (b, L, H, N) per head,
           dDx (b, L, H, P) = dy' * x, dz (b, L, H, P), dinit (b, H, P, N)); entries are None where the
    input was None."""
    dx, ddt, dA_part, dB_h, dC_h, dDx, dz, dinit = raw
    b, L, H, N = dB_h.shape
    dA = dA_part.sum(dim=(0, 2, 3))  # (H,)
    dB = dB_h.reshape(b, L, ngroups, H // ngroups, N).sum(3)  # (b, L, G, N)
    dC = dC_h.reshape(b, L, ngroups, H // ngroups, N).sum(3)  # (b, L, G, N)
    dD = None
    if D_shape is not None:
        dD = dDx.sum(dim=(0, 1))  # (H, P)
        if len(D_shape) == 1:
            dD = dD.sum(-1)  # (H,)
    return (dx, ddt, dA, dB, dC, dD, dz if has_z else None, ddt.sum(dim=(0, 1)) if has_bias else None,
            dinit if has_init else None)


def ssd_bwd(dy, dfinal, x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states, seq_idx, dt_softplus, dt_min,
            dt_max):
    """Backward on MPS tensors (all fp32 inside) -> gradients as custom_op.make_ssd_op expects."""
    ext = _ext()
    xx, dtt, AA, BB, CC, DD, zz, db, init, seq, limit, lo, hi = _common(
        x, dt, A, B, C, D, z, dt_bias, initial_states, seq_idx, dt_min, dt_max, torch.float32)
    raw = ext.ssd_bwd(_f32(dy), _f32(dfinal), xx, dtt, AA, BB, CC, DD, zz, db, init, seq, bool(dt_softplus), limit,
                      lo, hi)
    return reduce_grads(tuple(raw), ngroups=B.shape[2], D_shape=None if D is None else tuple(D.shape),
                        has_z=z is not None, has_bias=dt_bias is not None, has_init=initial_states is not None)


_fwd_op, _bwd_op = make_ssd_op("metal", ssd_fwd, ssd_bwd, device_types="mps")


def chunk_scan(x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None, initial_states=None, seq_idx=None,
               dt_softplus=False, dt_min=0.0, dt_max=math.inf):
    """The SSD on MPS tensors with the Metal kernels; differentiable in every tensor input (see module doc)."""
    _ext()
    return _fwd_op(x, dt, A, B, C, int(chunk_size), D, z, dt_bias, initial_states, seq_idx, bool(dt_softplus),
                   float(dt_min), float(dt_max))
