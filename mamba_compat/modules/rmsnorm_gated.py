"""Grouped, gated RMSNorm module of Mamba-2 (same parameters and semantics as mamba_ssm's RMSNorm in
ops/triton/layernorm_gated.py). The function is mamba_compat.ops.rmsnorm's dispatching `rmsnorm_gated`
(Triton on CUDA, the PyTorch reference in ops/rmsnorm/reference.py otherwise).

    norm_before_gate=True:   out = rmsnorm(x) * silu(z)
    norm_before_gate=False:  out = rmsnorm(x * silu(z))
rmsnorm is taken over groups of `group_size` consecutive channels (one group when group_size is None).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from ..ops.rmsnorm import rmsnorm_gated

__all__ = ["RMSNormGated", "rmsnorm_gated"]


class RMSNormGated(nn.Module):
    """Parameters: weight (hidden_size,), initialised to ones; no bias (registered as None, like upstream)."""

    def __init__(self, hidden_size: int, eps: float = 1e-5, group_size: Optional[int] = None,
                 norm_before_gate: bool = True, device=None, dtype=None):
        super().__init__()
        if group_size is not None and (group_size < 1 or hidden_size % group_size != 0):
            raise ValueError(f"group_size must divide hidden_size, got group_size={group_size}, "
                             f"hidden_size={hidden_size}")
        self.eps = eps
        self.weight = nn.Parameter(torch.empty(hidden_size, device=device, dtype=dtype))
        self.register_parameter("bias", None)
        self.group_size = group_size
        self.norm_before_gate = norm_before_gate
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)

    def forward(self, x: torch.Tensor, z: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x, z: (..., hidden_size) -> (..., hidden_size) in x.dtype."""
        return rmsnorm_gated(x, self.weight, z, self.eps, self.group_size, self.norm_before_gate)

    def extra_repr(self) -> str:
        return (f"{self.weight.shape[0]}, eps={self.eps}, group_size={self.group_size}, "
                f"norm_before_gate={self.norm_before_gate}")
