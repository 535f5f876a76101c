"""Single-env gymnasium version of DelayedCue (numpy in/out, CPU), registered as "memrl/DelayedCue-v0".
A finished episode is not auto-reset: the caller resets (gym_tasks._SingleEnv)."""
from __future__ import annotations

from .delayed_cue import DelayedCue
from .gym_tasks import _SingleEnv


class DelayedCueEnv(_SingleEnv):
    """Single DelayedCue; same options as `DelayedCue`."""

    def __init__(self, horizon: int = 200, num_cues: int = 2, noise: float = 0.0):
        super().__init__(DelayedCue(num_envs=1, horizon=horizon, num_cues=num_cues, noise=noise))
