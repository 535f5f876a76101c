"""Helpers shared by the batched memory envs: argument checks (TMaze, RepeatFirst), the action check and
checkpointing (all)."""
from __future__ import annotations

import torch


def check_positive(name: str, value, minimum: int, why: str = "") -> int:
    """`int(value)` if it is an integer >= minimum, else ValueError naming the argument."""
    if isinstance(value, bool) or int(value) != value or int(value) < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}{why}, got {value!r}")
    return int(value)


def check_nonnegative(name: str, value) -> float:
    """`float(value)` if it is a finite number >= 0, else ValueError naming the argument."""
    v = float(value)
    if not (v >= 0 and v != float("inf")):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return v


def check_actions(actions, num_envs: int, device: torch.device) -> torch.Tensor:
    """Actions as a (num_envs,) int64 tensor on `device`; ValueError for another shape or a float/complex dtype.

    The range is not checked (that would sync the device every step): an out-of-range action simply
    never equals the correct answer and earns nothing.
    """
    actions = torch.as_tensor(actions, device=device)
    if actions.shape != (num_envs,) or actions.is_floating_point() or actions.is_complex() \
            or actions.dtype == torch.bool:
        raise ValueError(f"actions must be an integer tensor of shape ({num_envs},), "
                         f"got {tuple(actions.shape)} {actions.dtype}")
    return actions.long()


class EnvCheckpoint:
    """state_dict / load_state_dict of a batched env: the (num_envs,) long tensors named in STATE_TENSORS (step
    counters, cues, ...), the generator state, the reset flag and the horizon: everything needed to continue
    bit-exactly. The env provides num_envs, device, generator, _needs_reset and horizon."""

    STATE_TENSORS: tuple = ()

    def state_dict(self) -> dict:
        return {**{k: getattr(self, k).clone() for k in self.STATE_TENSORS}, "rng": self.generator.get_state(),
                "needs_reset": self._needs_reset, "horizon": self.horizon}

    def load_state_dict(self, state: dict) -> None:
        for key in self.STATE_TENSORS:
            if tuple(state[key].shape) != (self.num_envs,):
                raise ValueError(f"state[{key!r}] must have shape ({self.num_envs},), got {tuple(state[key].shape)}")
        for key in self.STATE_TENSORS:
            setattr(self, key, state[key].to(self.device, torch.long).clone())
        self.generator.set_state(state["rng"])
        self._needs_reset = bool(state["needs_reset"])
        self.horizon = int(state.get("horizon", self.horizon))
