"""Grouped, gated RMSNorm as used by Mamba-2 (same parameters and semantics as mamba_ssm's RMSNorm in
ops/triton/layernorm_gated.py), in plain PyTorch with fp32 arithmetic (fp64 for fp64 inputs): the CPU
default and the oracle of the Triton kernels (triton.py).

    norm_before_gate=True:   out = rmsnorm(x) * silu(z)
    norm_before_gate=False:  out = rmsnorm(x * silu(z))
rmsnorm is taken over groups of `group_size` consecutive channels (one group when group_size is None).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F


def rmsnorm_gated(x: torch.Tensor, weight: torch.Tensor, z: Optional[torch.Tensor] = None, eps: float = 1e-5,
                  group_size: Optional[int] = None, norm_before_gate: bool = True) -> torch.Tensor:
    """x, z: (..., D); weight: (D,) -> (..., D) in x.dtype. D must be a multiple of group_size."""
    d = x.shape[-1]
    gs = d if group_size is None else group_size
    if d % gs != 0:
        raise ValueError(f"x's last dim {d} (shape {tuple(x.shape)}) must be a multiple of group_size {gs}")
    cdt = torch.promote_types(x.dtype, torch.float32)  # compute dtype
    xf = x.to(cdt)
    if z is not None and not norm_before_gate:
        xf = xf * F.silu(z.to(cdt))
    xg = xf.unflatten(-1, (d // gs, gs))  # (..., groups, group_size)
    xg = xg * torch.rsqrt(xg.square().mean(dim=-1, keepdim=True) + eps)
    out = xg.flatten(-2) * weight.to(cdt)  # (..., D)
    if z is not None and norm_before_gate:
        out = out * F.silu(z.to(cdt))
    return out.to(x.dtype)
