"""Space emulation (after PufferLib's): any supported gymnasium observation space <-> one flat float32 vector, and
the policy's categorical components <-> the env's action space. The one place where spaces are converted.

Observations (batched, as gymnasium's vector envs return them):
    Box, MultiBinary  -> flattened, float32
    Discrete(n)       -> one-hot of n (x - start)
    MultiDiscrete     -> the one-hots of its components, concatenated (nvec flattened in C order)
    Tuple, Dict       -> their parts encoded recursively and concatenated (Dict in the space's key order)

    size = obs_size(space)                         # length of the flat vector
    flat = encode_obs(space, batched_obs)          # (N, size) float32 numpy array

Actions: the policy outputs one categorical per component, or a diagonal Gaussian for Box actions
(memrl/models/distributions.py).
    dims = action_dims(space)                      # Discrete(n) -> (n,); MultiDiscrete(nvec) -> tuple(nvec)
    spec = action_spec(space)                      # what the policy outputs: n, tuple(nvec) or BoxActions(K)
    env_actions = decode_actions(space, actions)   # (N,) or (N, K) int64, or (N, K) float -> the env's actions
Box actions (float dtype, any shape, K = its size) are reals in [-1, 1] per component: where both bounds are
finite, decode maps [-1, 1] affinely onto [low, high] and clips (the Gaussian's log-prob is of the unclipped sample,
as in CleanRL's PPO); an unbounded component is passed through unchanged, a half-bounded one is clipped to its bound.

UnsupportedSpace (a TypeError) names the space and where it sits, e.g. "observation space ['goal'] Text(...)".
"""
from __future__ import annotations

import numpy as np
from gymnasium import spaces

OBS_SPACES = ("Box", "MultiBinary", "Discrete", "MultiDiscrete", "Tuple", "Dict")
ACTION_SPACES = ("Discrete", "MultiDiscrete (1-D nvec)", "Box (float)")


class UnsupportedSpace(TypeError):
    """A gymnasium space memrl cannot encode (observations) or act in (actions)."""


def _where(path: tuple) -> str:
    return "".join(f"[{p!r}]" for p in path) + " " if path else ""


def obs_size(space, _path: tuple = ()) -> int:
    """Length of the flat float vector that encode_obs makes of one observation of `space`."""
    if isinstance(space, (spaces.Box, spaces.MultiBinary)):
        return int(np.prod(space.shape))
    if isinstance(space, spaces.Discrete):
        return int(space.n)
    if isinstance(space, spaces.MultiDiscrete):
        return int(space.nvec.sum())
    if isinstance(space, spaces.Tuple):
        return sum(obs_size(s, _path + (i,)) for i, s in enumerate(space.spaces))
    if isinstance(space, spaces.Dict):
        return sum(obs_size(s, _path + (k,)) for k, s in space.spaces.items())
    raise UnsupportedSpace(f"observation space {_where(_path)}{space!r} is not supported "
                           f"(supported: {', '.join(OBS_SPACES)})")


def _one_hot(index: np.ndarray, n: int) -> np.ndarray:
    """(N, ...) integer indices in [0, n) -> (N, ... * n) float32 one-hots."""
    return np.eye(n, dtype=np.float32)[index].reshape(index.shape[0], -1)


def encode_obs(space, obs, _path: tuple = ()) -> np.ndarray:
    """A batch of observations of `space` (the vector env's batched layout) -> (N, obs_size(space)) float32."""
    if isinstance(space, (spaces.Box, spaces.MultiBinary)):
        obs = np.asarray(obs)
        return obs.reshape(obs.shape[0], -1).astype(np.float32, copy=False)  # (N, prod(shape))
    if isinstance(space, spaces.Discrete):
        return _one_hot(np.asarray(obs, dtype=np.int64) - int(space.start), int(space.n))
    if isinstance(space, spaces.MultiDiscrete):
        obs = np.asarray(obs, dtype=np.int64) - space.start  # (N, *nvec.shape)
        flat = obs.reshape(obs.shape[0], -1)  # (N, K)
        return np.concatenate([_one_hot(flat[:, k], int(n)) for k, n in enumerate(space.nvec.reshape(-1))], axis=1)
    if isinstance(space, spaces.Tuple):
        return np.concatenate([encode_obs(s, o, _path + (i,)) for i, (s, o) in enumerate(zip(space.spaces, obs))],
                              axis=1)
    if isinstance(space, spaces.Dict):
        return np.concatenate([encode_obs(s, obs[k], _path + (k,)) for k, s in space.spaces.items()], axis=1)
    obs_size(space, _path)  # raises UnsupportedSpace naming it
    raise AssertionError("unreachable")


def action_dims(space) -> tuple[int, ...]:
    """The sizes of the policy's categorical components for a discrete action space."""
    if isinstance(space, spaces.Discrete):
        return (int(space.n),)
    if isinstance(space, spaces.MultiDiscrete) and space.nvec.ndim == 1:
        return tuple(int(n) for n in space.nvec)
    if isinstance(space, spaces.Box):
        raise UnsupportedSpace(f"action space {space!r} is continuous: it has no categorical components "
                               f"(use action_spec, which gives BoxActions)")
    raise UnsupportedSpace(f"action space {space!r} is not supported (supported: {', '.join(ACTION_SPACES)})")


def action_spec(space):
    """What the policy outputs for `space`: n (Discrete), the tuple nvec (MultiDiscrete) or BoxActions(size) (Box)."""
    from .base import BoxActions

    if isinstance(space, spaces.Box):
        if not np.issubdtype(space.dtype, np.floating):
            raise UnsupportedSpace(f"action space {space!r} is an integer Box, which is not supported "
                                   f"(supported: {', '.join(ACTION_SPACES)})")
        return BoxActions(int(np.prod(space.shape)))
    dims = action_dims(space)
    return dims[0] if isinstance(space, spaces.Discrete) else dims


def decode_actions(space, actions: np.ndarray) -> np.ndarray:
    """Policy actions -> the env's batched actions: (N,) for Discrete or (N, K) for MultiDiscrete, int64 in [0, n)
    (the spaces' `start` offsets added); (N, K) float for Box, mapped from [-1, 1] onto the bounds (module docstring)."""
    if isinstance(space, spaces.Box):
        a = np.asarray(actions, dtype=np.float64).reshape(len(actions), *space.shape)
        low, high = space.low.astype(np.float64), space.high.astype(np.float64)
        both = np.isfinite(low) & np.isfinite(high)
        lo, hi = np.where(both, low, -1.0), np.where(both, high, 1.0)  # finite stand-ins where a bound is infinite
        scaled = np.where(both, lo + (np.clip(a, -1.0, 1.0) + 1.0) * 0.5 * (hi - lo), a)
        return np.clip(scaled, low, high).astype(space.dtype, copy=False)  # +-inf bounds leave a component as is
    actions = np.asarray(actions, dtype=np.int64)
    if isinstance(space, spaces.Discrete):
        return actions + int(space.start)
    return (actions + space.start).astype(space.dtype, copy=False)
