"""Helpers shared by the batched memory envs: argument checks (TMaze, RepeatFirst) and the action check (all).
Checkpointing is the protocol's (base.TorchVectorEnv.state_dict)."""
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


def check_actions(actions, num_envs: int, device: torch.device, shape: tuple | None = None,
                  continuous: bool = False) -> torch.Tensor:
    """Actions as an int64 tensor of `shape` (default (num_envs,)) on `device` (continuous: a float32 tensor);
    ValueError for another shape or dtype (discrete: float/complex/bool; continuous: anything but a real float).

    The range is not checked (that would sync the device every step): an out-of-range action simply
    never equals the correct answer and earns nothing (continuous actions are clipped by the env).
    """
    shape = (num_envs,) if shape is None else tuple(shape)
    actions = torch.as_tensor(actions, device=device)
    if continuous:
        if tuple(actions.shape) != shape or not actions.is_floating_point():
            raise ValueError(f"actions must be a float tensor of shape {shape}, got {tuple(actions.shape)} "
                             f"{actions.dtype}")
        return actions.float()
    if tuple(actions.shape) != shape or actions.is_floating_point() or actions.is_complex() \
            or actions.dtype == torch.bool:
        raise ValueError(f"actions must be an integer tensor of shape {shape}, "
                         f"got {tuple(actions.shape)} {actions.dtype}")
    return actions.long()
