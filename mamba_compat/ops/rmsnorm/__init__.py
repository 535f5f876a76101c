"""Grouped gated RMSNorm of Mamba-2 (mamba_ssm's RMSNorm / rmsnorm_fn semantics, see reference.py).

    out = rmsnorm_gated(x, weight, z, eps, group_size, norm_before_gate)      # (..., D), differentiable

Backends, one file each: reference.py (PyTorch, any device; the oracle, autograd differentiates it) and
triton.py (our Triton kernels: CUDA tensors, or CPU tensors under TRITON_INTERPRET=1 for tests). The backend
is mamba_compat.backends' choice, as for the scan (`backend=` per call, else set_backend /
MAMBA_COMPAT_BACKEND, else auto: triton on CUDA tensors, reference otherwise). 'naive' and 'metal' run the
reference here: the Metal backend has no norm kernel and the reference is its own oracle ('cpu' runs the
reference too). Forcing a backend
that cannot run on the tensors raises BackendUnavailable.
"""
from __future__ import annotations

import importlib
from typing import Optional

import torch

from ..checks import require_same_device, require_shape, require_tensor
from ..conv1d import impl_name
from . import reference

__all__ = ["rmsnorm_gated"]

_triton = None


def _triton_impl():
    global _triton
    if _triton is None:
        _triton = importlib.import_module(f"{__name__}.triton")
    return _triton


def _rows(t: torch.Tensor, d: int) -> torch.Tensor:
    """(..., D) -> (M, D) with unit column stride: a view where the strides allow (e.g. a slice of in_proj's
    output), else a copy."""
    t2 = t.reshape(-1, d)
    return t2 if t2.stride(-1) == 1 else t2.contiguous()


def rmsnorm_gated(x: torch.Tensor, weight: torch.Tensor, z: Optional[torch.Tensor] = None, eps: float = 1e-5,
                  group_size: Optional[int] = None, norm_before_gate: bool = True,
                  backend: Optional[str] = None) -> torch.Tensor:
    """Grouped gated RMSNorm, fp32 math.

    Args:
        x: (..., D); z: like x or None (the gate: norm_before_gate -> rmsnorm(x) * silu(z), else
            rmsnorm(x * silu(z))); weight: (D,)
        eps: added to the mean square; group_size: D's groups of consecutive channels (None: one group)
        backend: override the backend for this call
    Returns:
        (..., D) in x.dtype; differentiable in x, weight and z
    """
    require_tensor("x", x)
    if x.dim() < 1:
        raise ValueError("x must have at least one dimension (..., D)")
    d = x.shape[-1]
    gs = d if group_size is None else int(group_size)
    if gs < 1 or d % gs != 0:
        raise ValueError(f"x's last dim {d} (shape {tuple(x.shape)}) must be a multiple of group_size {gs}")
    require_tensor("weight", weight)
    require_shape("weight", weight, (d,), "(D,)")
    require_tensor("z", z, optional=True)
    if z is not None:
        require_shape("z", z, tuple(x.shape), "x's shape")
    require_same_device(dict(x=x, weight=weight, z=z))
    if impl_name(backend, x.device) == "triton":
        out = _triton_impl().rmsnorm_gated(_rows(x, d), weight, None if z is None else _rows(z, d), eps, gs,
                                           norm_before_gate)
        return out.view(x.shape)
    return reference.rmsnorm_gated(x, weight, z, eps, group_size, norm_before_gate)
