"""What every POPGym port shares: popgym's spaces, the observation encoding, and the step skeleton with same-step
autoreset.

A port exposes popgym's own spaces: `gym_observation_space` (what popgym's env returns, e.g. Discrete(4) or
Tuple(Discrete(2), Discrete(4))) and `single_action_space` (popgym's); `single_observation_space` is the flat Box
that memrl/envs/emulation.py makes of popgym's space, and the observations are exactly that encoding (one-hots
for Discrete / MultiDiscrete / Tuple parts, the floats for a Box), so a policy sees the same vector from the port
as from popgym through GymVectorEnv. Rewards are popgym's (returns within [-1, 1]); there is no success metric.

Subclasses implement _start(mask) (draw a new episode where mask is True), _observe() -> (num_envs, obs_dim) and
_advance(actions) -> (reward, terminated, truncated), which moves every env one step on.
"""
from __future__ import annotations

import numpy as np
import torch

from ..base import TorchVectorEnv
from ..common import check_actions, check_positive
from ..spaces import Box


class PopgymPort(TorchVectorEnv):
    """Base of the ports. Attributes: popgym_id, gym_observation_space, single_observation_space (flat Box),
    single_action_space, obs_dim, episode_length (steps of every episode, or None where it varies)."""

    reports_success = False
    popgym_id = ""
    episode_length: int | None = None

    def __init__(self, num_envs: int, device, gym_observation_space, action_space, flat_space=None):
        from ..emulation import obs_size  # gymnasium is needed from here on (popgym's spaces are gymnasium's)

        num_envs = check_positive("num_envs", num_envs, 1)
        super().__init__(num_envs, device)
        self.gym_observation_space = gym_observation_space
        self.obs_dim = obs_size(gym_observation_space)
        self.single_observation_space = flat_space or Box(low=-np.inf, high=np.inf, shape=(self.obs_dim,),
                                                          dtype=np.float32)
        self.single_action_space = action_space
        self.register_generator("generator", torch.Generator(device=self.device).manual_seed(0))

    def _start(self, mask: torch.Tensor) -> None:
        raise NotImplementedError

    def _observe(self) -> torch.Tensor:
        raise NotImplementedError

    def _advance(self, actions: torch.Tensor):
        raise NotImplementedError

    def reset(self, seed: int | None = None, options: dict | None = None):
        """A fresh episode in every env. Returns (obs (num_envs, obs_dim) float32, info {})."""
        if seed is not None:
            self.generator.manual_seed(int(seed))
        self._start(torch.ones(self.num_envs, dtype=torch.bool, device=self.device))
        self._needs_reset = False
        return self._observe(), {}

    def step(self, actions):
        """actions: (num_envs,) integers in [0, single_action_space.n). Returns obs (num_envs, obs_dim), reward
        (num_envs,) float32, terminated, truncated (num_envs,) bool, info {"final_obs": (num_envs, obs_dim), the
        ended episodes' last obs (zeros in the other rows)}; ended envs already show their next episode's obs."""
        if self._needs_reset:
            raise RuntimeError("call reset() before step()")
        actions = check_actions(actions, self.num_envs, self.device)
        reward, terminated, truncated = self._advance(actions)
        done = terminated | truncated
        final_obs = self._observe() * done.unsqueeze(1)  # (num_envs, obs_dim)
        self._start(done)  # same-step autoreset
        return self._observe(), reward, terminated, truncated, {"final_obs": final_obs}

    def __repr__(self):
        return (f"{type(self).__name__}({self.popgym_id or 'custom'}, num_envs={self.num_envs}, "
                f"device={self.device}, obs {self.gym_observation_space} -> ({self.obs_dim},), "
                f"actions {self.single_action_space})")


def one_hots(*parts) -> torch.Tensor:
    """(index (num_envs,) long, n) pairs -> their one-hots concatenated, (num_envs, sum n) float32: emulation's
    encoding of a Discrete (one pair), a MultiDiscrete or a Tuple of Discretes."""
    return torch.cat([torch.nn.functional.one_hot(index, n).float() for index, n in parts], dim=1)
