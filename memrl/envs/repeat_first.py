"""RepeatFirst (after POPGym's RepeatFirst): a random symbol is shown at every step; on the last step the
agent must name the FIRST symbol of the episode. Every later symbol is a distractor.

Batched and torch-native like DelayedCue (same API, same-step autoreset):

    env = RepeatFirst(num_envs=512, horizon=200, num_symbols=4, device="cpu")
    obs, info = env.reset(seed=0)                      # obs: (num_envs, num_symbols + 1) float32
    obs, reward, terminated, truncated, info = env.step(actions)   # actions: (num_envs,) int

Observation layout (obs_dim = num_symbols + 1), at step t of an episode of horizon H:
    [0, num_symbols)  one-hot of this step's symbol, drawn uniformly at every step (t = 0 included),
                      plus Gaussian noise of std `noise` at t > 0 (the first symbol is always clean)
    [num_symbols]     query flag: 1 at t = H-1
The action at the query step earns reward 1 if it equals the first symbol, else 0 (return in {0, 1});
actions at other steps have no effect. The episode terminates after the query step; the returned obs of
a finished env is already the first obs of its next episode, and info["final_obs"] holds the terminal
obs (all zeros). info["success"] is True where an episode just ended with reward 1. Episodes never
truncate.
"""
from __future__ import annotations

import torch

from .base import HorizonEnv
from .common import check_actions, check_nonnegative, check_positive
from .spaces import Box, Discrete


class RepeatFirst(HorizonEnv):
    """Batched RepeatFirst. Attributes: num_envs, horizon, num_symbols, noise, device, t (num_envs,),
    first (num_envs,) the symbol to repeat, symbol (num_envs,) the symbol shown now."""

    def __init__(self, num_envs: int = 1, horizon: int = 200, num_symbols: int = 4, noise: float = 0.0,
                 device: str | torch.device = "cpu"):
        self.num_envs = check_positive("num_envs", num_envs, 1)
        self.horizon = check_positive("horizon", horizon, 2, " (first step + query step)")
        self.num_symbols = check_positive("num_symbols", num_symbols, 2)
        self.noise = check_nonnegative("noise", noise)
        self.device = torch.device(device)
        self.obs_dim = self.num_symbols + 1
        self.single_observation_space = Box(low=-float("inf"), high=float("inf"), shape=(self.obs_dim,))
        self.single_action_space = Discrete(self.num_symbols)
        super().__init__(self.num_envs, self.device)  # the protocol: declared state below
        self.register_generator("generator", torch.Generator(device=self.device).manual_seed(0))
        self.register_state("t", torch.zeros(self.num_envs, dtype=torch.long, device=self.device))
        self.register_state("first", torch.zeros(self.num_envs, dtype=torch.long, device=self.device))
        self.register_state("symbol", torch.zeros(self.num_envs, dtype=torch.long, device=self.device))

    # -- core -------------------------------------------------------------------------------------------
    def _draw_symbols(self) -> None:
        """A fresh symbol for every env (one draw of num_envs values per step: fixed RNG use)."""
        self.symbol = torch.randint(0, self.num_symbols, (self.num_envs,), device=self.device,
                                    generator=self.generator)

    def _observe(self) -> torch.Tensor:
        """The observation at each env's current step t, (num_envs, obs_dim) float32."""
        k = self.num_symbols
        obs = torch.zeros(self.num_envs, self.obs_dim, device=self.device)
        obs[:, :k] = torch.nn.functional.one_hot(self.symbol, k).float()
        if self.noise > 0:
            noise = torch.randn(self.num_envs, k, device=self.device, generator=self.generator) * self.noise
            obs[:, :k] += noise * (self.t > 0).unsqueeze(1)
        obs[:, k] = (self.t >= self.horizon - 1).float()
        return obs

    def _start(self, mask: torch.Tensor) -> None:
        """Where mask (num_envs,) is True the episode restarts: t = 0 and the symbol shown now is the first."""
        self.t = torch.where(mask, torch.zeros_like(self.t), self.t)
        self.first = torch.where(mask, self.symbol, self.first)

    def reset(self, seed: int | None = None, options: dict | None = None):
        """Start a fresh episode in every env. Returns (obs (num_envs, obs_dim), info {})."""
        if seed is not None:
            self.generator.manual_seed(int(seed))
        self._draw_symbols()
        self._start(torch.ones(self.num_envs, dtype=torch.bool, device=self.device))
        self._needs_reset = False
        return self._observe(), {}

    def step(self, actions: torch.Tensor):
        """Advance every env by one step.

        Args:
            actions: (num_envs,) integer tensor (or array-like) of symbols in [0, num_symbols); only the
                action at the query step matters.
        Returns:
            obs (num_envs, obs_dim), reward (num_envs,) float32, terminated (num_envs,) bool, truncated
            (num_envs,) bool (always False), info {"final_obs": (num_envs, obs_dim) zeros, "success":
            (num_envs,) bool, True where an episode just ended with reward 1}.
        """
        if self._needs_reset:
            raise RuntimeError("call reset() before step()")
        actions = check_actions(actions, self.num_envs, self.device)
        at_query = self.t >= self.horizon - 1
        success = at_query & (actions == self.first)
        terminated = at_query
        self.t = self.t + 1
        self._draw_symbols()
        self._start(terminated)  # same-step autoreset
        final_obs = torch.zeros(self.num_envs, self.obs_dim, device=self.device)
        return self._observe(), success.float(), terminated, torch.zeros_like(terminated), \
            {"final_obs": final_obs, "success": success}

    def set_horizon(self, horizon: int) -> None:
        """Change the episode length (for curricula); running episodes keep their step counter, and one
        already past the new query step is queried at its next step."""
        self.horizon = check_positive("horizon", horizon, 2, " (first step + query step)")

    def __repr__(self):
        return (f"RepeatFirst(num_envs={self.num_envs}, horizon={self.horizon}, num_symbols={self.num_symbols}, "
                f"noise={self.noise}, device={self.device})")
