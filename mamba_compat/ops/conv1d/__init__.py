"""Causal depthwise conv1d of Mamba-2 (the xBC conv): sequence op, window after a sequence, one-token update.

    y = causal_conv1d(x, weight, bias, conv_state, seg, silu=True)      # (B, L, C), differentiable
    window = conv_state_after(x, conv_state, width, seg)                  # (B, C, W), differentiable
    y = causal_conv1d_update(x, conv_state, weight, bias, silu=True)    # (B, C); conv_state shifted in place

Backends, one file each: reference.py (PyTorch, any device; the oracle, autograd differentiates it) and
triton.py (our Triton kernels: CUDA tensors, or CPU tensors under TRITON_INTERPRET=1 for tests). The backend
is mamba_compat.backends' choice, as for the scan (`backend=` per call, else set_backend /
MAMBA_COMPAT_BACKEND, else auto: triton on CUDA tensors, reference otherwise). 'naive' and 'metal' run the
reference here: the Metal backend has no conv kernels and the reference is its own oracle; 'cpu' runs the
reference too (W elementwise taps: a small share of a CPU Mamba2 layer, see README). Forcing a backend
that cannot run on the tensors (triton on CPU without the interpreter, metal off MPS) raises
BackendUnavailable. conv_state_after is PyTorch on every backend (a few small ops on (B, W, C)).
"""
from __future__ import annotations

import importlib
from typing import Optional

import torch
import torch.nn.functional as F

from ... import backends
from ..checks import require_same_device, require_shape, require_tensor
from . import reference
from .reference import (conv_state_after, conv_step, segments_from_cu_seqlens, segments_from_reset,
                        segments_from_seq_idx)

__all__ = ["causal_conv1d", "causal_conv1d_update", "conv_state_after", "conv_step", "segments_from_seq_idx",
           "segments_from_reset", "segments_from_cu_seqlens", "impl_name"]

_BACKEND_FOR = {"reference": "reference", "naive": "reference", "metal": "reference", "cpu": "reference",
                "triton": "triton"}
_triton = None


def impl_name(backend: Optional[str], device: torch.device) -> str:
    """'triton' or 'reference': what runs these ops for tensors on `device` (raises BackendUnavailable for a
    backend forced where it cannot run)."""
    return _BACKEND_FOR[backends.resolve_for_call(backend, device)]


def _triton_impl():
    global _triton
    if _triton is None:
        _triton = importlib.import_module(f"{__name__}.triton")
    return _triton


def _check_weight(weight, bias, c):
    require_tensor("weight", weight)
    if weight.dim() != 2 or weight.shape[0] != c or weight.shape[1] < 1:
        raise ValueError(f"weight must have shape (channels, width) with channels = {c}, got {tuple(weight.shape)}")
    require_tensor("bias", bias, optional=True)
    if bias is not None:
        require_shape("bias", bias, (c,), "(channels,)")


def causal_conv1d(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                  conv_state: Optional[torch.Tensor] = None, seg: Optional[torch.Tensor] = None, silu: bool = False,
                  backend: Optional[str] = None) -> torch.Tensor:
    """Depthwise causal conv (reference.causal_conv1d's semantics), SiLU after it when `silu`.

    Args:
        x: (B, L, C); any strides (Mamba2 passes a slice of in_proj's output, read in place by the kernels)
        weight: (C, W); bias: (C,) or None
        conv_state: (B, C, W) the inputs before x (only the last W-1 columns are read) or None for zeros
        seg: (B, L) int segment ids (non-decreasing; the window is segment 0) or None
        silu: apply SiLU to the output (fused in the kernel)
        backend: override the backend for this call
    Returns:
        (B, L, C) in x.dtype; differentiable in x, weight, bias and conv_state
    """
    require_tensor("x", x)
    if x.dim() != 3:
        raise ValueError(f"x must be (batch, seqlen, channels), got shape {tuple(x.shape)}")
    b, seqlen, c = x.shape
    _check_weight(weight, bias, c)
    w = weight.shape[1]
    require_tensor("conv_state", conv_state, optional=True)
    if conv_state is not None:
        require_shape("conv_state", conv_state, (b, c, w), "(batch, channels, width)")
    if seg is not None:
        require_tensor("seg", seg, floating=False)
        if seg.dtype.is_floating_point or seg.dtype == torch.bool:
            raise TypeError(f"seg must be an integer tensor, got dtype {seg.dtype}")
        require_shape("seg", seg, (b, seqlen), "(batch, seqlen)")
    require_same_device(dict(x=x, weight=weight, bias=bias, conv_state=conv_state, seg=seg))
    if impl_name(backend, x.device) == "triton":
        return _triton_impl().causal_conv1d(x, weight, bias, conv_state, seg, silu)
    y = reference.causal_conv1d(x, weight, bias, conv_state, seg)
    return F.silu(y) if silu else y


def causal_conv1d_update(x: torch.Tensor, conv_state: torch.Tensor, weight: torch.Tensor,
                         bias: Optional[torch.Tensor] = None, silu: bool = False,
                         backend: Optional[str] = None) -> torch.Tensor:
    """One decode step (reference.conv_step's semantics), SiLU after it when `silu`: shift x (B, C) into
    conv_state (B, C, W) in place (any strides, e.g. allocate_inference_cache's transposed view; x is stored in
    the window's dtype) and return the conv output (B, C) in x.dtype.

    The Triton path is one kernel launch and, like upstream's causal_conv1d_update, not differentiable; the
    reference path is (autograd records the in-place update).
    """
    require_tensor("x", x)
    if x.dim() != 2:
        raise ValueError(f"x must be (batch, channels), got shape {tuple(x.shape)}")
    b, c = x.shape
    _check_weight(weight, bias, c)
    require_tensor("conv_state", conv_state)
    require_shape("conv_state", conv_state, (b, c, weight.shape[1]), "(batch, channels, width)")
    require_same_device(dict(x=x, conv_state=conv_state, weight=weight, bias=bias))
    if impl_name(backend, x.device) == "triton":
        return _triton_impl().causal_conv1d_update(x, conv_state, weight, bias, silu)
    y = reference.conv_step(x, conv_state, weight, bias)
    return F.silu(y) if silu else y
