"""Selective state-space scan (SSD), chunked: the op contract of DESIGN §1.

Backends, one file each: naive.py (oracle loop), reference.py (chunked PyTorch), cpu.py (chunked PyTorch with
a hand-written backward, the CPU default), triton.py (CUDA), metal.py (MPS). Each exposes `chunk_scan(x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states,
seq_idx, dt_softplus, dt_min, dt_max) -> (y, final_states)`, differentiable in every tensor input.
"""
from __future__ import annotations

import importlib
import importlib.util

import torch

from ... import backends
from ..checks import (check_chunk_size, check_dt_limit, check_groups, check_seq_idx, require_rank, require_same_device,
                      require_same_dtype, require_shape, require_tensor)

__all__ = ["mamba_chunk_scan_combined", "chunk_scan_impl"]


_IMPLS = {}


def chunk_scan_impl(name: str):
    """The `chunk_scan` function of backend `name` (imported on first use, then cached)."""
    if name not in _IMPLS:
        _IMPLS[name] = importlib.import_module(f"{__name__}.{name}").chunk_scan
    return _IMPLS[name]


for _name in ("naive", "reference", "cpu"):  # cheap and always available: import now, so torch.compile never traces an import
    chunk_scan_impl(_name)
if torch.cuda.is_available() and importlib.util.find_spec("triton") is not None:
    try:  # the triton ops register when their module imports: do it now, not inside a first compiled call
        chunk_scan_impl("triton")
    except ImportError:
        pass  # a broken triton install: the first call that needs the backend raises the same error itself


def _check(x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states, seq_idx, dt_limit):
    require_tensor("x", x)
    require_rank("x", x, (4,), "(batch, seqlen, nheads, headdim)")
    b, seqlen, h, p = x.shape
    if seqlen < 1:
        raise ValueError(f"x must have seqlen >= 1, got shape {tuple(x.shape)}")
    require_tensor("dt", dt)
    require_shape("dt", dt, (b, seqlen, h), "(batch, seqlen, nheads)")
    require_tensor("A", A)
    require_shape("A", A, (h,), "(nheads,)")
    require_tensor("B", B)
    require_rank("B", B, (4,), "(batch, seqlen, ngroups, dstate)")
    if B.shape[:2] != x.shape[:2]:
        raise ValueError(f"B must have shape (batch, seqlen, ngroups, dstate) with batch, seqlen = {(b, seqlen)} "
                         f"from x {tuple(x.shape)}, got {tuple(B.shape)}")
    g, n = B.shape[2], B.shape[3]
    check_groups(h, g, f"B {tuple(B.shape)} (x has shape {tuple(x.shape)})")
    require_tensor("C", C)
    require_shape("C", C, tuple(B.shape), "B's shape (batch, seqlen, ngroups, dstate)")
    chunk_size = check_chunk_size(chunk_size)
    require_tensor("D", D, optional=True)
    if D is not None and tuple(D.shape) not in ((h,), (h, p)):
        raise ValueError(f"D must have shape (nheads,) = {(h,)} or (nheads, headdim) = {(h, p)}, got {tuple(D.shape)}")
    require_tensor("z", z, optional=True)
    if z is not None:
        require_shape("z", z, tuple(x.shape), "x's shape (batch, seqlen, nheads, headdim)")
    require_tensor("dt_bias", dt_bias, optional=True)
    if dt_bias is not None:
        require_shape("dt_bias", dt_bias, (h,), "(nheads,)")
    require_tensor("initial_states", initial_states, optional=True)
    if initial_states is not None:
        require_shape("initial_states", initial_states, (b, h, p, n), "(batch, nheads, headdim, dstate)")
    check_seq_idx(seq_idx, b, seqlen)
    dt_min, dt_max = check_dt_limit(dt_limit)
    require_same_device(dict(x=x, dt=dt, A=A, B=B, C=C, D=D, z=z, dt_bias=dt_bias, initial_states=initial_states,
                             seq_idx=seq_idx))
    require_same_dtype(dict(x=x, B=B, C=C, z=z))
    return chunk_size, dt_min, dt_max


def mamba_chunk_scan_combined(x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None, initial_states=None,
                              seq_idx=None, cu_seqlens=None, dt_softplus=False, dt_limit=(0.0, float("inf")),
                              return_final_states=False, return_varlen_states=False, backend=None):
    """Selective state-space scan, same arguments and results as mamba_ssm's.

    Args:
        x: (batch, seqlen, nheads, headdim) float16/bfloat16/float32/float64
        dt: (batch, seqlen, nheads)
        A: (nheads,) (negative for decay)
        B, C: (batch, seqlen, ngroups, dstate); heads share B/C within a group of nheads/ngroups heads
        chunk_size: int, the chunk length of the chunked algorithm (any seqlen is accepted)
        D: (nheads,) or (nheads, headdim) skip connection, optional
        z: (batch, seqlen, nheads, headdim) gate, optional: y *= silu(z)
        dt_bias: (nheads,), optional, added to dt before softplus
        initial_states: (batch, nheads, headdim, dstate), optional
        seq_idx: (batch, seqlen) int; where it changes the carried state is dropped
        dt_softplus: apply softplus to dt + dt_bias
        dt_limit: (min, max) clamp of the processed dt (applied only when not the default (0, inf))
        return_final_states: also return the state after the last step, (batch, nheads, headdim, dstate) fp32
        backend: override the backend for this call (else set_backend / MAMBA_COMPAT_BACKEND / auto)
    Returns:
        y: (batch, seqlen, nheads, headdim) in x.dtype, or (y, final_states)

    Example:
        >>> y = mamba_chunk_scan_combined(x, dt, A, B, C, chunk_size=64, D=D, dt_softplus=True)
    """
    if cu_seqlens is not None or return_varlen_states:
        raise NotImplementedError("cu_seqlens / return_varlen_states are not supported; express packed sequences "
                                  "with seq_idx instead")
    chunk_size, dt_min, dt_max = _check(x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states, seq_idx, dt_limit)
    name = backends.resolve_for_call(backend, x.device, x.dtype)
    y, final = chunk_scan_impl(name)(x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states, seq_idx, dt_softplus,
                                     dt_min, dt_max)
    return (y, final) if return_final_states else y

