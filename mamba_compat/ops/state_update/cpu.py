"""The decode step for the `cpu` backend: the reference's (one token: a few elementwise ops on the state, nothing
for a CPU-specific layout to win)."""
from __future__ import annotations

from .reference import state_update

__all__ = ["state_update"]
