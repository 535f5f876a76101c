"""Observation/action spaces: gymnasium's when installed, else minimal stand-ins with the same fields."""
from __future__ import annotations

import numpy as np

try:  # gymnasium is optional (the `rl` extra)
    from gymnasium.spaces import Box, Discrete
except ImportError:  # pragma: no cover - exercised only without gymnasium
    class Box:  # noqa: D101 - same fields as gymnasium.spaces.Box
        def __init__(self, low, high, shape, dtype=np.float32):
            self.low = np.full(shape, low, dtype=dtype)
            self.high = np.full(shape, high, dtype=dtype)
            self.shape = tuple(shape)
            self.dtype = np.dtype(dtype)

        def __repr__(self):
            return f"Box({self.shape}, {self.dtype})"

    class Discrete:  # noqa: D101 - same fields as gymnasium.spaces.Discrete
        def __init__(self, n: int):
            self.n = int(n)
            self.shape = ()
            self.dtype = np.dtype(np.int64)

        def __repr__(self):
            return f"Discrete({self.n})"

__all__ = ["Box", "Discrete"]
