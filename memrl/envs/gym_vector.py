"""Any gymnasium env behind the TorchVectorEnv protocol: a registered id ("CartPole-v1") or "module:Class".

    env = GymVectorEnv("CartPole-v1", num_envs=64, device="cpu")            # SyncVectorEnv in this process
    env = GymVectorEnv("CartPole-v1", num_envs=64, workers=1)               # AsyncVectorEnv: one process per env
    obs, info = env.reset(seed=0)               # obs (64, obs_size) float32 tensor (emulation.encode_obs)
    obs, reward, terminated, truncated, info = env.step(actions)   # actions (64,) or (64, K) integer tensor

The gymnasium vector env runs with autoreset_mode=AutoresetMode.SAME_STEP, so the protocol's same-step autoreset
holds: where an episode ends the returned obs is the next episode's first, and info["final_obs"] (num_envs,
obs_size) holds the ended episode's last obs (zeros in the other rows). numpy <-> torch happens here only: actions
go to the host once per step, observations/rewards/flags come back as one tensor each.

Truncation (e.g. gymnasium's TimeLimit) is reported as such, not as termination: the trainer bootstraps the value
of info["final_obs"] there. There is no success metric (reports_success = False): runs are judged by returns.
The env's state lives in numpy/Python objects, possibly in other processes: nothing is declared, so neither a
checkpoint nor a CUDA graph can hold it (state_dict raises; the trainer re-seeds on resume).
"""
from __future__ import annotations

import importlib

import gymnasium
import numpy as np
import torch
from gymnasium.vector import AsyncVectorEnv, AutoresetMode, SyncVectorEnv
from gymnasium.vector.utils import concatenate, create_empty_array

from .base import BoxActions, TorchVectorEnv
from .common import check_actions
from .emulation import action_spec, decode_actions, encode_obs, obs_size
from .spaces import Box


def gym_env_factory(name: str):
    """A no-argument callable that builds one env: gymnasium.make(name) for a registered id (also gymnasium's
    "module:Id-v0", which imports module first), or Class() for "module:Class" (a gymnasium.Env subclass).
    ValueError naming `name` when it is neither."""
    module, sep, attr = name.partition(":")
    if sep and attr.isidentifier():
        try:
            cls = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as err:
            raise ValueError(f"env {name!r}: cannot load class {attr!r} from module {module!r}: {err}") from None
        if not (isinstance(cls, type) and issubclass(cls, gymnasium.Env)):
            raise ValueError(f"env {name!r}: {module}.{attr} is not a gymnasium.Env subclass")
        return cls
    if sep:
        try:
            importlib.import_module(module)  # registers its ids
        except ImportError as err:
            raise ValueError(f"env {name!r}: cannot import module {module!r}: {err}") from None
        name = attr
    if name not in gymnasium.registry:
        raise ValueError(f"env {name!r} is not a registered gymnasium id")
    return lambda: gymnasium.make(name)


class GymVectorEnv(TorchVectorEnv):
    """gymnasium's vector API (SAME_STEP autoreset) as a TorchVectorEnv. Attributes: vector_env (the gymnasium
    vector env), gym_observation_space / gym_action_space (one env's), obs_dim, action_components."""

    reports_success = False
    truncates = True
    capturable = False
    checkpointable = False

    def __init__(self, name: str, num_envs: int = 1, device: str | torch.device = "cpu", workers: int = 0):
        factory = gym_env_factory(name)
        if int(num_envs) < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        if int(workers) < 0:
            raise ValueError(f"workers must be >= 0 (0 = SyncVectorEnv), got {workers}")
        super().__init__(num_envs, device)
        self.name = name
        vector_cls = AsyncVectorEnv if workers > 0 else SyncVectorEnv
        self.vector_env = vector_cls([factory] * self.num_envs, autoreset_mode=AutoresetMode.SAME_STEP)
        self.gym_observation_space = self.vector_env.single_observation_space
        self.gym_action_space = self.vector_env.single_action_space
        try:
            self.obs_dim = obs_size(self.gym_observation_space)
            self._components = action_spec(self.gym_action_space)
        except TypeError:
            self.vector_env.close()
            raise
        self.single_observation_space = Box(low=-np.inf, high=np.inf, shape=(self.obs_dim,), dtype=np.float32)
        self.single_action_space = self.gym_action_space
        self._continuous = isinstance(self._components, BoxActions)
        if self._continuous:
            self._action_shape = (self.num_envs, self._components.size)
        elif isinstance(self._components, tuple):
            self._action_shape = (self.num_envs, len(self._components))
        else:
            self._action_shape = (self.num_envs,)

    @property
    def action_components(self) -> int | tuple | BoxActions:
        """n for a Discrete(n) action space (actions (num_envs,)), the tuple nvec for MultiDiscrete ((num_envs, K)),
        BoxActions(K) for a Box of K reals ((num_envs, K) float, in [-1, 1] per component)."""
        return self._components

    def _obs(self, batched) -> torch.Tensor:
        return torch.from_numpy(encode_obs(self.gym_observation_space, batched)).to(self.device)

    def reset(self, seed: int | None = None, options: dict | None = None):
        """Reset every env (env i seeded seed + i, gymnasium's rule). Returns (obs (num_envs, obs_dim), info {})."""
        obs, _ = self.vector_env.reset(seed=seed, options=options)
        self._needs_reset = False
        return self._obs(obs), {}

    def step(self, actions):
        """actions: (num_envs,) integer tensor for Discrete, (num_envs, K) for MultiDiscrete, each in [0, n);
        (num_envs, K) float for Box (see decode_actions).
        Returns obs, reward (num_envs,) float32, terminated, truncated (num_envs,) bool, info {"final_obs"}."""
        if self._needs_reset:
            raise RuntimeError("call reset() before step()")
        actions = check_actions(actions, self.num_envs, self.device, shape=self._action_shape,
                                continuous=self._continuous)
        obs, reward, terminated, truncated, info = self.vector_env.step(
            decode_actions(self.gym_action_space, actions.cpu().numpy()))
        final = np.zeros((self.num_envs, self.obs_dim), dtype=np.float32)
        ended = np.flatnonzero(info.get("_final_obs", np.zeros(self.num_envs, dtype=bool)))
        if ended.size:
            space = self.gym_observation_space
            batch = concatenate(space, [info["final_obs"][i] for i in ended], create_empty_array(space, ended.size))
            final[ended] = encode_obs(space, batch)
        as_bool = lambda x: torch.from_numpy(np.asarray(x, dtype=bool)).to(self.device)  # noqa: E731
        return (self._obs(obs), torch.from_numpy(np.asarray(reward, dtype=np.float32)).to(self.device),
                as_bool(terminated), as_bool(truncated), {"final_obs": torch.from_numpy(final).to(self.device)})

    def state_dict(self) -> dict:
        raise NotImplementedError(f"the state of gymnasium env {self.name!r} lives in numpy/Python objects and "
                                  f"cannot be saved; exact resume is promised only for torch-native envs")

    def load_state_dict(self, state: dict) -> None:
        self.state_dict()

    def close(self) -> None:
        self.vector_env.close()

    def __repr__(self):
        return (f"GymVectorEnv({self.name!r}, num_envs={self.num_envs}, {type(self.vector_env).__name__}, "
                f"obs {self.gym_observation_space} -> ({self.obs_dim},), actions {self.gym_action_space})")
