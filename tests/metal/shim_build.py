"""Build and call the CPU shim harness of the Metal kernels (tests/metal/harness.cpp) through ctypes.

`build(q)` compiles csrc/metal/*.metal (the exact files the extension embeds) as C++20 against
tests/metal/shim, once per source hash and chunk length, into a cache under the temp dir;
`Shim(lib)` wraps the entry points on float32 numpy arrays. `build(..., src_dir=...)` compiles another copy
of the sources (the mutation tests use it).
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Optional

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
METAL_DIR = ROOT / "csrc" / "metal"
SHIM_DIR = Path(__file__).resolve().parent / "shim"
HARNESS = Path(__file__).resolve().parent / "harness.cpp"
CACHE = Path(tempfile.gettempdir()) / "mamba_compat_metal_shim"


def compiler() -> Optional[str]:
    return shutil.which(os.environ.get("CXX", "g++")) or shutil.which("clang++")


def _digest(src_dir: Path, flags: list[str]) -> str:
    h = hashlib.sha256(" ".join(flags).encode())
    for d in (src_dir, SHIM_DIR):
        for f in sorted(d.iterdir()):
            if f.is_file():
                h.update(f.name.encode())
                h.update(f.read_bytes())
    h.update(HARNESS.read_bytes())
    return h.hexdigest()[:16]


def build(q: Optional[int] = 16, src_dir: Path = METAL_DIR, opt: str = "-O1", in_t: str = "float",
          extra: tuple = ()) -> Path:
    """Compile the harness with chunk length q (None: the default of ssd_params.h) and input type in_t
    ("float" or "half", as the glue's SSD_IN_T); returns the shared library path (cached)."""
    cxx = compiler()
    if cxx is None:
        raise RuntimeError("no C++ compiler (g++ or clang++) found")
    flags = ["-std=c++20", opt, "-shared", "-fPIC", "-pthread", "-Wno-attributes"]
    flags += [] if q is None else [f"-DSSD_Q={q}"]
    flags += [] if in_t == "float" else [f"-DSSD_IN_T={in_t}"]
    flags += list(extra)
    out = CACHE / f"shim_{_digest(Path(src_dir), flags)}.so"
    if out.exists():
        return out
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(f".{os.getpid()}.tmp")
    cmd = [cxx, *flags, f"-I{SHIM_DIR}", f"-I{src_dir}", str(HARNESS), "-o", str(tmp)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"shim build failed: {' '.join(cmd)}\n{res.stderr[-4000:]}")
    os.replace(tmp, out)
    return out


def _ptr(a: Optional[np.ndarray], *dtypes):
    """The buffer address of a C-contiguous array of one of `dtypes` (None -> NULL)."""
    if a is None:
        return None
    assert a.dtype in dtypes and a.flags.c_contiguous, (a.dtype, dtypes)
    return ctypes.c_void_p(a.ctypes.data)


def _fp(a):
    return _ptr(a, np.float32)


def _ip(a):
    return _ptr(a, np.int32)


def _f32(a) -> Optional[np.ndarray]:
    return None if a is None else np.ascontiguousarray(a, dtype=np.float32)


class ShimError(RuntimeError):
    """The simulated launch failed (deadlock, divergent barrier, bad launch plan)."""


class Shim:
    """The Metal kernels on the CPU. Every method takes numpy arrays (any float dtype, cast to float32)."""

    def __init__(self, path: Path, reverse: bool = False):
        self.lib = ctypes.CDLL(str(path))
        self.reverse = reverse
        self.q = self.lib.shim_chunk_len()
        self.in_np = {4: np.float32, 2: np.float16}[self.lib.shim_in_size()]  # x, B, C, z, y of the forward

    def _check(self, rc: int, err) -> None:
        if rc != 0:
            raise ShimError(err.value.decode())

    # ---- raw entry points: the same arguments and results as the extension's (csrc/metal/ssd_metal.mm) ----

    def raw_fwd(self, x, dt, A, B, C, D, z, dt_bias, init, seq, softplus, has_limit, dt_min, dt_max):
        """float32 arrays (x, B, C, z in self.in_np), D (H, P), seq int32; -> (y in self.in_np, final_states)."""
        b, L, H, P = x.shape
        G, N = B.shape[2], B.shape[3]
        y = np.full((b, L, H, P), np.nan, self.in_np)
        xp = lambda a: _ptr(a, self.in_np)  # noqa: E731
        fin = np.full((b, H, P, N), np.nan, np.float32)
        err = ctypes.create_string_buffer(512)
        rc = self.lib.shim_ssd_fwd(b, L, H, P, G, N, int(softplus), int(has_limit), ctypes.c_float(dt_min),
                                   ctypes.c_float(dt_max), int(self.reverse), xp(x), _fp(dt), _fp(A), xp(B),
                                   xp(C), _fp(D), xp(z), _fp(dt_bias), _fp(init), _ip(seq), xp(y), _fp(fin), err,
                                   512)
        self._check(rc, err)
        return y, fin

    def raw_bwd(self, dy, dfinal, x, dt, A, B, C, D, z, dt_bias, init, seq, softplus, has_limit, dt_min, dt_max):
        """-> raw (dx, ddt, dA_part, dB_h, dC_h, dDx, dz, dinit) as the extension returns them."""
        b, L, H, P = x.shape
        G, N = B.shape[2], B.shape[3]
        nc = -(-L // self.q)
        nan = lambda *s: np.full(s, np.nan, np.float32)  # noqa: E731
        dx, dDx, dz = nan(b, L, H, P), np.zeros((b, L, H, P), np.float32), np.zeros((b, L, H, P), np.float32)
        ddt, dA_part = nan(b, L, H), nan(b, H, nc, self.q)
        dB_h, dC_h, dinit = nan(b, L, H, N), nan(b, L, H, N), nan(b, H, P, N)
        err = ctypes.create_string_buffer(512)
        rc = self.lib.shim_ssd_bwd(b, L, H, P, G, N, int(softplus), int(has_limit), ctypes.c_float(dt_min),
                                   ctypes.c_float(dt_max), int(self.reverse), _fp(x), _fp(dt), _fp(A), _fp(B),
                                   _fp(C), _fp(D), _fp(z), _fp(dt_bias), _fp(init), _ip(seq), _fp(dy), _fp(dfinal),
                                   _fp(dx), _fp(ddt), _fp(dA_part), _fp(dB_h), _fp(dC_h), _fp(dDx), _fp(dz),
                                   _fp(dinit), err, 512)
        self._check(rc, err)
        return dx, ddt, dA_part, dB_h, dC_h, dDx, dz, dinit

    def raw_state_update(self, state, x, dt, A, B, C, D, z, dt_bias, idx, softplus):
        """float32 arrays, state (S, H, P, N) updated in place, idx int32 or None -> out (b, H, P)."""
        b, H, P = x.shape
        G, N = B.shape[1], B.shape[2]
        out = np.full((b, H, P), np.nan, np.float32)
        err = ctypes.create_string_buffer(512)
        rc = self.lib.shim_state_update(b, H, P, G, N, int(softplus), int(self.reverse), _fp(state), _fp(x),
                                        _fp(dt), _fp(A), _fp(B), _fp(C), _fp(D), _fp(z), _fp(dt_bias), _ip(idx),
                                        _fp(out), err, 512)
        self._check(rc, err)
        return out

    # ---- convenience: numpy inputs of any float dtype, prepared as metal.py prepares them ----

    @staticmethod
    def _prep(x, dt, A, B, C, D, z, dt_bias, initial_states, seq_idx, dt_min, dt_max):
        H, P = x.shape[2], x.shape[3]
        D2 = None if D is None else _f32(np.broadcast_to(np.asarray(D).reshape(H, -1), (H, P)))
        seq = None if seq_idx is None else np.ascontiguousarray(seq_idx, dtype=np.int32)
        lim = (dt_min, dt_max) != (0.0, float("inf"))
        return (*map(_f32, (x, dt, A, B, C)), D2, *map(_f32, (z, dt_bias, initial_states)), seq, lim,
                float(dt_min), min(float(dt_max), 3.0e38))

    def ssd_fwd(self, x, dt, A, B, C, D=None, z=None, dt_bias=None, initial_states=None, seq_idx=None,
                dt_softplus=False, dt_min=0.0, dt_max=float("inf")):
        """x (b, L, H, P), dt (b, L, H), A (H,), B/C (b, L, G, N), D (H,) or (H, P) -> y, final (b, H, P, N)."""
        a = list(self._prep(x, dt, A, B, C, D, z, dt_bias, initial_states, seq_idx, dt_min, dt_max))
        for i in (0, 3, 4, 6):  # x, B, C, z in the kernels' input type
            a[i] = None if a[i] is None else a[i].astype(self.in_np)
        return self.raw_fwd(*a[:10], dt_softplus, *a[10:])

    def ssd_bwd(self, dy, dfinal, x, dt, A, B, C, D=None, z=None, dt_bias=None, initial_states=None,
                seq_idx=None, dt_softplus=False, dt_min=0.0, dt_max=float("inf")):
        """Gradients (dx, ddt, dA, dB, dC, dD, dz, ddt_bias, dinitial_states), reduced by metal.py's own
        `reduce_grads` (None where the input is None)."""
        import torch

        from mamba_compat.ops.ssd.metal import reduce_grads

        a = self._prep(x, dt, A, B, C, D, z, dt_bias, initial_states, seq_idx, dt_min, dt_max)
        raw = self.raw_bwd(_f32(dy), _f32(dfinal), *a[:10], dt_softplus, *a[10:])
        grads = reduce_grads(tuple(torch.from_numpy(r) for r in raw), ngroups=B.shape[2],
                             D_shape=None if D is None else np.shape(D), has_z=z is not None,
                             has_bias=dt_bias is not None, has_init=initial_states is not None)
        return tuple(None if g is None else g.numpy() for g in grads)

    def state_update(self, state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False,
                     state_batch_indices=None):
        """Normalized shapes: state (S, H, P, N) float32 (updated in place), x/dt/z (b, H, P), A (H, P, N),
        B/C (b, G, N), D/dt_bias (H, P). Returns out (b, H, P)."""
        assert state.dtype == np.float32 and state.flags.c_contiguous
        idx = None if state_batch_indices is None else np.ascontiguousarray(state_batch_indices, dtype=np.int32)
        return self.raw_state_update(state, *map(_f32, (x, dt, A, B, C, D, z, dt_bias)), idx, dt_softplus)


