"""The batched-env protocol every memrl env implements: `TorchVectorEnv` (and `HorizonEnv`, one with a horizon knob).

gymnasium's VectorEnv contract, on torch tensors on the training device:

    env.num_envs, env.device, env.single_observation_space (a flat Box), env.single_action_space
    obs, info = env.reset(seed=0)                              # obs (num_envs, obs_dim) float32
    obs, reward, terminated, truncated, info = env.step(actions)
        # reward (num_envs,) float32, terminated / truncated (num_envs,) bool
        # info["final_obs"] (num_envs, obs_dim): the last obs of the episodes that ended at this step
        # info["success"] (num_envs,) bool, only where env.reports_success

Autoreset mode: SAME_STEP (gymnasium.vector.AutoresetMode.SAME_STEP): where an episode ends, the returned obs is
already the first obs of the next episode and info["final_obs"] holds the ended episode's last obs.

Declared state. An env registers the tensors and torch.Generators it owns, like nn.Module.register_buffer:

    self.register_state("t", torch.zeros(n, dtype=torch.long, device=device))   # then self.t reads and writes it
    self.register_generator("generator", torch.Generator(device=device))

Checkpoints (state_dict / load_state_dict) and CUDA-graph capture (memrl/ppo/rollout.py: state_tensors,
set_state_tensors, generators) use this declaration and nothing else. Python-level settings that change the
dynamics (HorizonEnv's horizon) go into get_extra_state / set_extra_state, as in nn.Module.
"""
from __future__ import annotations

from typing import NamedTuple

import torch


class BoxActions(NamedTuple):
    """`action_components` of an env with continuous actions: `size` reals per env, in the policy's normalized
    space (the env maps [-1, 1] onto its bounds and clips; see envs/emulation.decode_actions)."""
    size: int


class TorchVectorEnv:
    """Base class of batched envs (see the module docstring). Subclasses call super().__init__(num_envs, device),
    register their state, and implement reset and step."""

    autoreset_mode = "SameStep"
    """gymnasium.vector.AutoresetMode.SAME_STEP.value: the obs of an env whose episode ended is the next episode's."""
    reports_success = True
    """Whether info["success"] marks the episodes that ended in success (memory tasks); else only returns count."""
    truncates = False
    """Whether step() can ever return truncated=True (then the trainer bootstraps the value of info["final_obs"])."""
    capturable = True
    """Whether step() is pure tensor work on the declared state (no host syncs): CUDA-graph capture is allowed."""
    checkpointable = True
    """Whether state_dict() holds the whole env state (exact resume); False where it lives outside torch."""

    @property
    def action_components(self) -> int | tuple | BoxActions:
        """What the policy outputs: n for one categorical over Discrete(n) (actions (num_envs,)), a tuple of
        sizes for one categorical per component (actions (num_envs, K)), or BoxActions(K) for K reals
        (actions (num_envs, K) float32)."""
        return int(self.single_action_space.n)

    def __init__(self, num_envs: int, device: str | torch.device = "cpu"):
        object.__setattr__(self, "_state", {})  # name -> tensor (declared order)
        object.__setattr__(self, "_generators", {})  # name -> torch.Generator
        self.num_envs = int(num_envs)
        self.device = torch.device(device)
        self._needs_reset = True

    # ------------------------------------------------------------------------------------------- declaration
    def register_state(self, name: str, tensor: torch.Tensor) -> None:
        """Declare a state tensor; afterwards `self.<name>` reads it and `self.<name> = t` replaces it."""
        self._check_new_name(name)
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"register_state({name!r}, ...) needs a torch.Tensor, got {type(tensor).__name__}")
        self._state[name] = tensor

    def register_generator(self, name: str, generator: torch.Generator) -> None:
        """Declare a torch.Generator the env draws from; afterwards `self.<name>` is it."""
        self._check_new_name(name)
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"register_generator({name!r}, ...) needs a torch.Generator, got "
                            f"{type(generator).__name__}")
        self._generators[name] = generator

    def _check_new_name(self, name: str) -> None:
        if name in self._state or name in self._generators or name in self.__dict__ or name in _RESERVED:
            raise ValueError(f"{type(self).__name__}: {name!r} is already an attribute or declared name")

    def __getattr__(self, name: str):  # only called when normal lookup fails: the declared names
        for table in ("_state", "_generators"):
            found = self.__dict__.get(table, {})
            if name in found:
                return found[name]
        raise AttributeError(f"{type(self).__name__!s} has no attribute {name!r}")

    def __setattr__(self, name: str, value) -> None:
        if name in self.__dict__.get("_state", ()):
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"state {name!r} must stay a torch.Tensor, got {type(value).__name__}")
            self._state[name] = value
        elif name in self.__dict__.get("_generators", ()):
            raise AttributeError(f"generator {name!r} is declared; seed it or set its state instead of replacing it")
        else:
            object.__setattr__(self, name, value)

    def state_tensors(self) -> dict:
        """The declared state tensors by name (the live tensors, not copies)."""
        return dict(self._state)

    def set_state_tensors(self, tensors: dict) -> None:
        """Make the declared state these very tensors (no copy: CUDA-graph capture points the env at static buffers).
        tensors: every declared name, each with its current shape and dtype."""
        self._check_tensors(tensors, "tensors")
        self._state.update(tensors)

    def generators(self) -> dict:
        """The declared generators by name."""
        return dict(self._generators)

    # ------------------------------------------------------------------------------------------- checkpoints
    def get_extra_state(self) -> dict:
        """Python-level settings that change the dynamics (e.g. the horizon); {} by default."""
        return {}

    def set_extra_state(self, state: dict) -> None:
        """Restore get_extra_state's dict."""

    def state_dict(self) -> dict:
        """Everything needed to continue bit-exactly: the declared tensors (copies) and generator states by name,
        the reset flag and the extra state."""
        return {**{k: v.clone() for k, v in self._state.items()},
                **{k: g.get_state() for k, g in self._generators.items()},
                "needs_reset": self._needs_reset, **self.get_extra_state()}

    def load_state_dict(self, state: dict) -> None:
        """Restore state_dict's dict; every key and shape is checked before anything changes (ValueError)."""
        missing = [k for k in [*self._state, *self._generators, "needs_reset"] if k not in state]
        if missing:
            raise ValueError(f"{type(self).__name__} state is missing {missing}; it has {sorted(state)}")
        self._check_tensors({k: state[k] for k in self._state}, "state", dtypes=False)
        for k, v in self._state.items():
            self._state[k] = state[k].to(v.device, v.dtype).clone()
        for k, g in self._generators.items():
            g.set_state(state[k])
        self._needs_reset = bool(state["needs_reset"])
        self.set_extra_state(state)

    def _check_tensors(self, tensors: dict, what: str, dtypes: bool = True) -> None:
        if set(tensors) != set(self._state):
            raise ValueError(f"{what} must have exactly the declared names {sorted(self._state)}, "
                             f"got {sorted(tensors)}")
        for k, v in self._state.items():
            if tuple(tensors[k].shape) != tuple(v.shape) or (dtypes and tensors[k].dtype != v.dtype):
                raise ValueError(f"{what}[{k!r}] must have shape {tuple(v.shape)}" + (f" and dtype {v.dtype}" if dtypes
                                 else "") + f", got {tuple(tensors[k].shape)} {tensors[k].dtype}")

    # ------------------------------------------------------------------------------------------- the contract
    def reset(self, seed: int | None = None, options: dict | None = None):
        """Start a fresh episode in every env -> (obs (num_envs, obs_dim), info)."""
        raise NotImplementedError

    def step(self, actions):
        """Advance every env one step -> (obs, reward, terminated, truncated, info), same-step autoreset."""
        raise NotImplementedError

    def close(self) -> None:
        """Release resources (worker processes); nothing for a torch-native env."""


_RESERVED = frozenset(n for n in dir(TorchVectorEnv) if not n.startswith("__"))


class HorizonEnv(TorchVectorEnv):
    """A TorchVectorEnv with a horizon knob: `horizon` (episode length) and `set_horizon(h)`, which the trainer's
    curriculum turns. The horizon is part of the extra state (checkpoints, CUDA-graph keys)."""

    horizon: int

    def set_horizon(self, horizon: int) -> None:
        raise NotImplementedError

    def get_extra_state(self) -> dict:
        return {"horizon": self.horizon}

    def set_extra_state(self, state: dict) -> None:
        self.horizon = int(state["horizon"])
