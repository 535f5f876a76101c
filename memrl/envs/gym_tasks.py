"""Single-env gymnasium versions of TMaze and RepeatFirst (numpy in/out, CPU), for registration as
"memrl/TMaze-v0" and "memrl/RepeatFirst-v0". A finished episode is not auto-reset: the caller resets."""
from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch

from .repeat_first import RepeatFirst
from .tmaze import TMaze


class _SingleEnv(gym.Env):
    """One episode at a time of a batched env built with num_envs=1 on the CPU."""

    metadata = {"render_modes": []}

    def __init__(self, batched):
        self._env = batched
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, shape=(batched.obs_dim,), dtype=np.float32)
        self.action_space = gym.spaces.Discrete(batched.single_action_space.n)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        obs, _ = self._env.reset(seed=seed)
        return obs[0].numpy(), {}

    def step(self, action):
        obs, reward, terminated, _, info = self._env.step(torch.tensor([int(action)]))
        done = bool(terminated[0])
        if done:
            obs = info["final_obs"]
            self._env._needs_reset = True  # no autoreset for a single env
        return obs[0].numpy(), float(reward[0]), done, False, {"success": bool(info["success"][0])}


class TMazeEnv(_SingleEnv):
    """Single passive T-maze; same options as `TMaze`."""

    def __init__(self, horizon: int = 200, noise: float = 0.0, step_penalty: float = 0.0):
        super().__init__(TMaze(num_envs=1, horizon=horizon, noise=noise, step_penalty=step_penalty))


class RepeatFirstEnv(_SingleEnv):
    """Single RepeatFirst; same options as `RepeatFirst`."""

    def __init__(self, horizon: int = 200, num_symbols: int = 4, noise: float = 0.0):
        super().__init__(RepeatFirst(num_envs=1, horizon=horizon, num_symbols=num_symbols, noise=noise))
