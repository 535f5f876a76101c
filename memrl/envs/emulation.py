"""Space emulation (after PufferLib's): any supported gymnasium observation space <-> one flat float32 vector, and
the policy's categorical components <-> the env's action space. The one place where spaces are converted.

Observations (batched, as gymnasium's vector envs return them):
    Box, MultiBinary  -> flattened, float32
    Discrete(n)       -> one-hot of n (x - start)
    MultiDiscrete     -> the one-hots of its components, concatenated (nvec flattened in C order)
    Tuple, Dict       -> their parts encoded recursively and concatenated (Dict in the space's key order)

    size = obs_size(space)                         # length of the flat vector
    flat = encode_obs(space, batched_obs)          # (N, size) float32 numpy array

Actions: the policy outputs one categorical per component (memrl/models/distributions.py).
    dims = action_dims(space)                      # Discrete(n) -> (n,); MultiDiscrete(nvec) -> tuple(nvec)
    env_actions = decode_actions(space, actions)   # (N,) or (N, K) int64 -> the vector env's batched actions
Box actions are not supported (UnsupportedSpace): there is no Gaussian head yet.

UnsupportedSpace (a TypeError) names the space and where it sits, e.g. "observation space ['goal'] Text(...)".
"""
from __future__ import annotations

import numpy as np
from gymnasium import spaces

OBS_SPACES = ("Box", "MultiBinary", "Discrete", "MultiDiscrete", "Tuple", "Dict")
ACTION_SPACES = ("Discrete", "MultiDiscrete (1-D nvec)")


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
    """The sizes of the policy's categorical components for an action space."""
    if isinstance(space, spaces.Discrete):
        return (int(space.n),)
    if isinstance(space, spaces.MultiDiscrete) and space.nvec.ndim == 1:
        return tuple(int(n) for n in space.nvec)
    if isinstance(space, spaces.Box):
        raise UnsupportedSpace(f"action space {space!r} is not supported: continuous (Box) actions need a Gaussian "
                               f"policy head, which memrl does not have (supported: {', '.join(ACTION_SPACES)})")
    raise UnsupportedSpace(f"action space {space!r} is not supported (supported: {', '.join(ACTION_SPACES)})")


def decode_actions(space, actions: np.ndarray) -> np.ndarray:
    """Policy actions (N,) for Discrete or (N, K) for MultiDiscrete, int64 in [0, n) -> the env's batched actions
    (the spaces' `start` offsets added)."""
    actions = np.asarray(actions, dtype=np.int64)
    if isinstance(space, spaces.Discrete):
        return actions + int(space.start)
    return (actions + space.start).astype(space.dtype, copy=False)
