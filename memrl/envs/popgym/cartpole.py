"""POPGym's PositionOnlyCartPole and NoisyPositionOnlyCartPole (popgym/envs/position_only_cartpole.py,
noisy_position_only_cartpole.py), batched on tensors.

gymnasium's CartPole-v1 physics (classic_control/cartpole.py: Euler steps of tau = 0.02 s, force 10 N, the same
constants and order of float64 operations), but the agent observes only the cart position and the pole angle
(float32 [x, theta], Box of +-[4.8, 0.419]); the velocities must be inferred from memory. Each step earns
1 / max_episode_length (so a whole episode returns 1); an episode terminates when |x| > 2.4 or |theta| > 12
degrees and is truncated after max_episode_length steps. Start state uniform in [-0.05, 0.05]^4, as gymnasium's.
PositionOnlyCartPole Easy/Medium/Hard: max_episode_length 200 / 400 / 600.
NoisyPositionOnlyCartPole adds N(0, noise_sigma^2) float32 noise to every observation (reset's too), clipped to
the Box; Easy/Medium/Hard: noise_sigma 0.1 / 0.2 / 0.3, max_episode_length 200.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from gymnasium import spaces

from ..common import check_nonnegative, check_positive
from .port import PopgymPort

GRAVITY, MASSCART, MASSPOLE, LENGTH, FORCE_MAG, TAU = 9.8, 1.0, 0.1, 0.5, 10.0, 0.02
TOTAL_MASS = MASSPOLE + MASSCART
POLEMASS_LENGTH = MASSPOLE * LENGTH
THETA_THRESHOLD = 12 * 2 * math.pi / 360
X_THRESHOLD = 2.4
OBS_HIGH = np.array([X_THRESHOLD * 2, THETA_THRESHOLD * 2], dtype=np.float32)


def cartpole_physics(state: torch.Tensor, push_right: torch.Tensor):
    """One step of gymnasium's CartPoleEnv (Euler integrator) for a batch: state (N, 4) float64 [x, x_dot, theta,
    theta_dot], push_right (N,) bool -> (next state (N, 4) float64, terminated (N,) bool)."""
    x, x_dot, theta, theta_dot = state.unbind(1)
    force = torch.where(push_right, FORCE_MAG, -FORCE_MAG).to(state.dtype)
    costheta, sintheta = torch.cos(theta), torch.sin(theta)
    temp = (force + POLEMASS_LENGTH * (theta_dot * theta_dot) * sintheta) / TOTAL_MASS
    thetaacc = (GRAVITY * sintheta - costheta * temp) / (
        LENGTH * (4.0 / 3.0 - MASSPOLE * (costheta * costheta) / TOTAL_MASS))
    xacc = temp - POLEMASS_LENGTH * thetaacc * costheta / TOTAL_MASS
    x, x_dot = x + TAU * x_dot, x_dot + TAU * xacc
    theta, theta_dot = theta + TAU * theta_dot, theta_dot + TAU * thetaacc
    terminated = (x < -X_THRESHOLD) | (x > X_THRESHOLD) | (theta < -THETA_THRESHOLD) | (theta > THETA_THRESHOLD)
    return torch.stack([x, x_dot, theta, theta_dot], dim=1), terminated


class PositionOnlyCartPole(PopgymPort):
    """Batched POPGym PositionOnlyCartPole. State: state (num_envs, 4) float64 [x, x_dot, theta, theta_dot],
    steps (num_envs,) taken in the episode."""

    truncates = True

    def __init__(self, num_envs: int = 1, max_episode_length: int = 200, device="cpu"):
        self.max_episode_length = check_positive("max_episode_length", max_episode_length, 1)
        box = spaces.Box(low=-OBS_HIGH, high=OBS_HIGH, dtype=np.float32)
        super().__init__(num_envs, device, box, spaces.Discrete(2), flat_space=box)
        self.register_state("state", torch.zeros(self.num_envs, 4, dtype=torch.float64, device=self.device))
        self.register_state("steps", torch.zeros(self.num_envs, dtype=torch.long, device=self.device))
        self.reward_scale = 1 / self.max_episode_length

    def _start(self, mask: torch.Tensor) -> None:
        fresh = torch.rand(self.num_envs, 4, dtype=torch.float64, device=self.device, generator=self.generator)
        fresh = fresh * 0.1 - 0.05  # uniform in [-0.05, 0.05), as gymnasium's reset
        self.state = torch.where(mask.unsqueeze(1), fresh, self.state)
        self.steps = torch.where(mask, torch.zeros_like(self.steps), self.steps)

    def _observe(self) -> torch.Tensor:
        # columns 0 and 2 by a slice: a list index would copy a CPU index tensor (refused inside a CUDA graph)
        return self.state[:, 0::2].float()  # (num_envs, 2): x, theta

    def _advance(self, actions: torch.Tensor):
        self.state, terminated = cartpole_physics(self.state, actions == 1)
        self.steps = self.steps + 1
        reward = torch.full((self.num_envs,), self.reward_scale, device=self.device)
        return reward, terminated, self.steps >= self.max_episode_length


class NoisyPositionOnlyCartPole(PositionOnlyCartPole):
    """PositionOnlyCartPole whose observations carry N(0, noise_sigma^2) noise, clipped to the observation Box."""

    def __init__(self, num_envs: int = 1, noise_sigma: float = 0.1, max_episode_length: int = 200, device="cpu"):
        self.noise_sigma = check_nonnegative("noise_sigma", noise_sigma)
        super().__init__(num_envs, max_episode_length, device)
        self._high = torch.from_numpy(OBS_HIGH).to(self.device)

    def _standard_normal(self) -> torch.Tensor:
        """(num_envs, 2) float64 draws of N(0, 1)."""
        return torch.randn(self.num_envs, 2, dtype=torch.float64, device=self.device, generator=self.generator)

    def _noise(self) -> torch.Tensor:
        """(num_envs, 2) float32 N(0, noise_sigma^2) noise, scaled in float64 and then cast, as popgym's
        np_random.normal(0, sigma).astype(np.float32)."""
        return (self._standard_normal() * self.noise_sigma).float()

    def _observe(self) -> torch.Tensor:
        return torch.clamp(super()._observe() + self._noise(), -self._high, self._high)
