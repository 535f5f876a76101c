"""Tiny gymnasium envs for the adapter tests (loaded as "gym_helpers:Class": pytest puts tests/memrl on sys.path).

ChooseTwo: MultiDiscrete([3, 4]) actions; reward 1 per component equal to the target shown (a Tuple of a
Discrete(3) and a Discrete(4)); 5 steps, then truncated (a time limit, not an end).
DictObs: a Dict observation {"pos": Box(2,), "tag": Discrete(3), "bits": MultiDiscrete([2, 3])}; action
Discrete(2); reward 1 when the action equals tag % 2; terminates after 3 steps.
TextObs: an observation space the emulation cannot encode (Text).
ReachTarget: Box actions (see the class).
"""
import gymnasium as gym
import numpy as np
from gymnasium import spaces


class ChooseTwo(gym.Env):
    def __init__(self):
        self.observation_space = spaces.Tuple((spaces.Discrete(3), spaces.Discrete(4)))
        self.action_space = spaces.MultiDiscrete([3, 4])
        self.t = 0

    def _draw(self):
        self.target = (int(self.np_random.integers(3)), int(self.np_random.integers(4)))
        return self.target

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self._draw(), {}

    def step(self, action):
        reward = float(int(action[0]) == self.target[0]) + float(int(action[1]) == self.target[1])
        self.t += 1
        return self._draw(), reward, False, self.t >= 5, {}


class DictObs(gym.Env):
    def __init__(self):
        self.observation_space = spaces.Dict({"pos": spaces.Box(-1, 1, (2,), np.float32), "tag": spaces.Discrete(3),
                                              "bits": spaces.MultiDiscrete([2, 3])})
        self.action_space = spaces.Discrete(2)
        self.t = 0

    def _obs(self):
        self.obs = {"pos": self.np_random.uniform(-1, 1, 2).astype(np.float32), "tag": int(self.np_random.integers(3)),
                    "bits": self.np_random.integers(0, [2, 3]).astype(np.int64)}
        return self.obs

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self._obs(), {}

    def step(self, action):
        reward = float(int(action) == self.obs["tag"] % 2)
        self.t += 1
        return self._obs(), reward, self.t >= 3, False, {}


class TextObs(gym.Env):
    def __init__(self):
        self.observation_space = spaces.Text(8)
        self.action_space = spaces.Discrete(2)


class ReachTarget(gym.Env):
    """Continuous actions: obs u ~ U[-1, 1]^2 each step, action Box([-2, -2], [2, 2]); reward -|a - u|^2; 4 steps,
    then truncated. Acting a = 0 earns -2/3 per step on average, a = u earns 0."""

    def __init__(self):
        self.observation_space = spaces.Box(-1.0, 1.0, (2,), dtype=np.float32)
        self.action_space = spaces.Box(-2.0, 2.0, (2,), dtype=np.float32)
        self.t = 0

    def _draw(self):
        self.u = self.np_random.uniform(-1.0, 1.0, 2).astype(np.float32)
        return self.u

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self._draw(), {}

    def step(self, action):
        reward = -float(np.sum((np.asarray(action, dtype=np.float64) - self.u) ** 2))
        self.t += 1
        return self._draw(), reward, False, self.t >= 4, {}
