"""DelayedCue: remember a cue shown at t=0 and answer it at the query step t=horizon-1.

A batched, torch-native environment: every tensor lives on the training device and `step` has no
per-env Python loop. API in the style of gymnasium's VectorEnv with same-step autoreset:

    env = DelayedCue(num_envs=512, horizon=200, device="cpu")
    obs, info = env.reset(seed=0)                      # obs: (num_envs, num_cues + 1) float32
    obs, reward, terminated, truncated, info = env.step(actions)   # actions: (num_envs,) int

Observation layout: channels [0, num_cues) carry the cue one-hot at t=0 (zeros, or Gaussian noise of
std `noise`, at other steps); channel num_cues is the query flag, 1 on the last step t=horizon-1.
The action at the query step earns reward 1 if it equals the cue, else 0 (so the return is in {0, 1});
actions at other steps have no effect. The episode terminates after the query step; the returned obs
of a finished env is already the first obs of its next episode (same-step autoreset), and
info["final_obs"] holds the terminal obs (all zeros) for those rows. Episodes never truncate.
"""
from __future__ import annotations

import torch

from .base import HorizonEnv
from .common import check_actions
from .spaces import Box, Discrete


class DelayedCue(HorizonEnv):
    """Batched DelayedCue. Attributes: num_envs, horizon, num_cues, noise, device, t (num_envs,), cue (num_envs,)."""

    def __init__(self, num_envs: int = 1, horizon: int = 200, num_cues: int = 2, noise: float = 0.0,
                 device: str | torch.device = "cpu"):
        if int(num_envs) < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        if int(horizon) < 2:
            raise ValueError(f"horizon must be >= 2 (cue step + query step), got {horizon}")
        if int(num_cues) < 2:
            raise ValueError(f"num_cues must be >= 2, got {num_cues}")
        if float(noise) < 0:
            raise ValueError(f"noise must be >= 0, got {noise}")
        self.num_envs, self.horizon, self.num_cues = int(num_envs), int(horizon), int(num_cues)
        self.noise = float(noise)
        self.device = torch.device(device)
        self.obs_dim = self.num_cues + 1
        self.single_observation_space = Box(low=-float("inf"), high=float("inf"), shape=(self.obs_dim,))
        self.single_action_space = Discrete(self.num_cues)
        super().__init__(self.num_envs, self.device)  # the protocol: declared state below
        self.register_generator("generator", torch.Generator(device=self.device).manual_seed(0))
        self.register_state("t", torch.zeros(self.num_envs, dtype=torch.long, device=self.device))
        self.register_state("cue", torch.zeros(self.num_envs, dtype=torch.long, device=self.device))

    # -- core -------------------------------------------------------------------------------------------
    def _observe(self) -> torch.Tensor:
        """The observation at each env's current step t, (num_envs, obs_dim) float32."""
        n, c = self.num_envs, self.num_cues
        obs = torch.zeros(n, self.obs_dim, device=self.device)
        if self.noise > 0:
            noise = torch.randn(n, c, device=self.device, generator=self.generator) * self.noise
            obs[:, :c] = noise * (self.t > 0).unsqueeze(1)
        at_start = self.t == 0
        obs[:, :c] += torch.nn.functional.one_hot(self.cue, c).float() * at_start.unsqueeze(1)
        obs[:, c] = (self.t >= self.horizon - 1).float()
        return obs

    def _new_cues(self, mask: torch.Tensor) -> None:
        draws = torch.randint(0, self.num_cues, (self.num_envs,), device=self.device, generator=self.generator)
        self.cue = torch.where(mask, draws, self.cue)
        self.t = torch.where(mask, torch.zeros_like(self.t), self.t)

    def reset(self, seed: int | None = None, options: dict | None = None):
        """Start a fresh episode in every env. Returns (obs (num_envs, obs_dim), info {})."""
        if seed is not None:
            self.generator.manual_seed(int(seed))
        self._new_cues(torch.ones(self.num_envs, dtype=torch.bool, device=self.device))
        self._needs_reset = False
        return self._observe(), {}

    def step(self, actions: torch.Tensor):
        """Advance every env by one step.

        Args:
            actions: (num_envs,) integer tensor (or array-like) of cue guesses in [0, num_cues).
        Returns:
            obs (num_envs, obs_dim), reward (num_envs,) float32, terminated (num_envs,) bool,
            truncated (num_envs,) bool (always False), info {"final_obs": (num_envs, obs_dim),
            "success": (num_envs,) bool, 1 where an episode just ended with reward 1}.
        """
        if self._needs_reset:
            raise RuntimeError("call reset() before step()")
        actions = check_actions(actions, self.num_envs, self.device)
        at_query = self.t >= self.horizon - 1  # >=: an episode past a shortened horizon ends now
        reward = (at_query & (actions.long() == self.cue)).float()
        terminated = at_query
        truncated = torch.zeros_like(terminated)
        self.t = self.t + 1
        final_obs = torch.zeros(self.num_envs, self.obs_dim, device=self.device)
        self._new_cues(terminated)  # same-step autoreset
        obs = self._observe()
        return obs, reward, terminated, truncated, {"final_obs": final_obs, "success": reward > 0}

    def set_horizon(self, horizon: int) -> None:
        """Change the episode length (for curricula); running episodes keep their step counter."""
        if int(horizon) < 2:
            raise ValueError(f"horizon must be >= 2 (cue step + query step), got {horizon}")
        self.horizon = int(horizon)

    def __repr__(self):
        return (f"DelayedCue(num_envs={self.num_envs}, horizon={self.horizon}, num_cues={self.num_cues}, "
                f"noise={self.noise}, device={self.device})")
