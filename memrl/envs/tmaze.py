"""Passive T-maze (Bakker 2001; the "Passive T-Maze" of memory-RL benchmarks such as Ni et al. 2023).

The agent sees a cue (up or down) at the start of a corridor, is carried along the corridor of blank
steps, and at the junction on the last step must turn left (action 0) after "up" (cue 0) or right
(action 1) after "down" (cue 1). Horizon = corridor length + 2 (the cue step and the junction step).

Batched and torch-native like DelayedCue (same API, same-step autoreset):

    env = TMaze(num_envs=512, horizon=200, device="cpu")
    obs, info = env.reset(seed=0)                      # obs: (num_envs, 5) float32
    obs, reward, terminated, truncated, info = env.step(actions)   # actions: (num_envs,) int in {0, 1}

Observation layout (obs_dim = 5), at step t of an episode of horizon H:
    [0:2]  cue one-hot (up, down) at t=0; zeros (or Gaussian noise of std `noise`) at t > 0
    [2]    corridor flag: 1 for 0 < t < H-1
    [3]    position along the maze, t / (H-1), in [0, 1]
    [4]    junction flag: 1 at t = H-1 (the decision step)
Reward: at the junction, 1 if the action equals the cue, else 0; at every earlier step -step_penalty
(default 0, so the return is in {0, 1}). The episode terminates after the junction step; the returned
obs of a finished env is already the first obs of its next episode, and info["final_obs"] holds the
terminal obs (all zeros). info["success"] is True where an episode just ended at the right arm.
Episodes never truncate.
"""
from __future__ import annotations

import torch

from .base import HorizonEnv
from .common import check_actions, check_nonnegative, check_positive
from .spaces import Box, Discrete

CUE, CORRIDOR, POSITION, JUNCTION = slice(0, 2), 2, 3, 4


class TMaze(HorizonEnv):
    """Batched passive T-maze. Attributes: num_envs, horizon, corridor_length, noise, step_penalty, device,
    t (num_envs,) step within the episode, cue (num_envs,) 0 = up/left, 1 = down/right."""

    num_actions = 2

    def __init__(self, num_envs: int = 1, horizon: int = 200, noise: float = 0.0, step_penalty: float = 0.0,
                 device: str | torch.device = "cpu"):
        self.num_envs = check_positive("num_envs", num_envs, 1)
        self.horizon = check_positive("horizon", horizon, 2, " (cue step + junction step)")
        self.noise = check_nonnegative("noise", noise)
        self.step_penalty = check_nonnegative("step_penalty", step_penalty)
        self.device = torch.device(device)
        self.obs_dim = 5
        self.single_observation_space = Box(low=-float("inf"), high=float("inf"), shape=(self.obs_dim,))
        self.single_action_space = Discrete(self.num_actions)
        super().__init__(self.num_envs, self.device)  # the protocol: declared state below
        self.register_generator("generator", torch.Generator(device=self.device).manual_seed(0))
        self.register_state("t", torch.zeros(self.num_envs, dtype=torch.long, device=self.device))
        self.register_state("cue", torch.zeros(self.num_envs, dtype=torch.long, device=self.device))

    @property
    def corridor_length(self) -> int:
        """Blank steps between the cue and the junction."""
        return self.horizon - 2

    # -- core -------------------------------------------------------------------------------------------
    def _observe(self) -> torch.Tensor:
        """The observation at each env's current step t, (num_envs, 5) float32."""
        obs = torch.zeros(self.num_envs, self.obs_dim, device=self.device)
        at_start = (self.t == 0).unsqueeze(1)  # (N, 1)
        if self.noise > 0:
            noise = torch.randn(self.num_envs, 2, device=self.device, generator=self.generator) * self.noise
            obs[:, CUE] = noise * ~at_start
        obs[:, CUE] += torch.nn.functional.one_hot(self.cue, 2).float() * at_start
        at_junction = self.t >= self.horizon - 1
        obs[:, CORRIDOR] = ((self.t > 0) & ~at_junction).float()
        obs[:, POSITION] = self.t.clamp(max=self.horizon - 1).float() / (self.horizon - 1)
        obs[:, JUNCTION] = at_junction.float()
        return obs

    def _new_episodes(self, mask: torch.Tensor) -> None:
        """Draw fresh cues and rewind t where mask (num_envs,) is True (draws for every env: fixed RNG use)."""
        draws = torch.randint(0, 2, (self.num_envs,), device=self.device, generator=self.generator)
        self.cue = torch.where(mask, draws, self.cue)
        self.t = torch.where(mask, torch.zeros_like(self.t), self.t)

    def reset(self, seed: int | None = None, options: dict | None = None):
        """Start a fresh episode in every env. Returns (obs (num_envs, 5), info {})."""
        if seed is not None:
            self.generator.manual_seed(int(seed))
        self._new_episodes(torch.ones(self.num_envs, dtype=torch.bool, device=self.device))
        self._needs_reset = False
        return self._observe(), {}

    def step(self, actions: torch.Tensor):
        """Advance every env by one step.

        Args:
            actions: (num_envs,) integer tensor (or array-like), 0 = left, 1 = right; only the action at
                the junction step matters.
        Returns:
            obs (num_envs, 5), reward (num_envs,) float32, terminated (num_envs,) bool, truncated
            (num_envs,) bool (always False), info {"final_obs": (num_envs, 5) zeros, "success": (num_envs,)
            bool, True where an episode just ended at the arm the cue pointed to}.
        """
        if self._needs_reset:
            raise RuntimeError("call reset() before step()")
        actions = check_actions(actions, self.num_envs, self.device)
        at_junction = self.t >= self.horizon - 1
        success = at_junction & (actions == self.cue)
        reward = success.float() - self.step_penalty * (~at_junction).float()
        terminated = at_junction
        self.t = self.t + 1
        final_obs = torch.zeros(self.num_envs, self.obs_dim, device=self.device)
        self._new_episodes(terminated)  # same-step autoreset
        return self._observe(), reward, terminated, torch.zeros_like(terminated), \
            {"final_obs": final_obs, "success": success}

    def set_horizon(self, horizon: int) -> None:
        """Change the maze length (for curricula); running episodes keep their step counter, and one already
        past the new junction decides at its next step."""
        self.horizon = check_positive("horizon", horizon, 2, " (cue step + junction step)")

    def __repr__(self):
        return (f"TMaze(num_envs={self.num_envs}, horizon={self.horizon}, noise={self.noise}, "
                f"step_penalty={self.step_penalty}, device={self.device})")
