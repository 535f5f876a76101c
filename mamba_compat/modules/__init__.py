"""Modules: `Mamba2` (drop-in for mamba_ssm.Mamba2) and its grouped gated RMSNorm."""
from .mamba2 import Mamba2
from .rmsnorm_gated import RMSNormGated, rmsnorm_gated

__all__ = ["Mamba2", "RMSNormGated", "rmsnorm_gated"]
