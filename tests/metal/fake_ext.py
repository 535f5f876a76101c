"""A stand-in for the `mamba_compat._metal` extension on machines without Metal: the same functions and
argument checks as csrc/metal/ssd_metal.mm, computed by the shim-compiled kernels on CPU tensors. Lets the
tests run mamba_compat/ops/ssd/metal.py and state_update/metal.py (dtype handling, D expansion, the
gradient reductions) end to end."""
from __future__ import annotations

import numpy as np
import torch


def _np(t, dtype=torch.float32):
    if t is None:
        return None
    assert t.is_contiguous(), "the extension requires contiguous tensors"
    assert t.dtype == dtype, f"the extension requires {dtype}, got {t.dtype}"
    return t.numpy()


class FakeMetal:
    def __init__(self, shim, bfloat: bool = False):
        self.shim = shim
        self.bfloat = bfloat
        self.calls = []

    def chunk_len(self):
        return self.shim.q

    def supports_dtype(self, name: str):
        return name in ("float32", "float16") or (name == "bfloat16" and self.bfloat)

    def ssd_fwd(self, x, dt, A, B, C, D, z, dt_bias, init, seq, softplus, has_limit, dt_min, dt_max):
        self.calls.append(("ssd_fwd", x.dtype))
        in_t = x.dtype
        assert in_t in (torch.float32, torch.float16, torch.bfloat16)
        f = lambda t: None if t is None else _np(t, in_t).astype(np.float32)  # noqa: E731 (kernel reads in_t)
        assert D is None or tuple(D.shape) == (x.shape[2], x.shape[3])
        y, fin = self.shim.raw_fwd(f(x), _np(dt), _np(A), f(B), f(C), _np(D), f(z), _np(dt_bias), _np(init),
                                   _np(seq, torch.int32), softplus, has_limit, dt_min, dt_max)
        return torch.from_numpy(y).to(in_t), torch.from_numpy(fin)

    def ssd_bwd(self, dy, dfinal, x, dt, A, B, C, D, z, dt_bias, init, seq, softplus, has_limit, dt_min, dt_max):
        self.calls.append(("ssd_bwd", x.dtype))
        raw = self.shim.raw_bwd(_np(dy), _np(dfinal), _np(x), _np(dt), _np(A), _np(B), _np(C), _np(D), _np(z),
                                _np(dt_bias), _np(init), _np(seq, torch.int32), softplus, has_limit, dt_min, dt_max)
        return [torch.from_numpy(r) for r in raw]

    def state_update(self, state, x, dt, A, B, C, D, z, dt_bias, idx, softplus):
        self.calls.append(("state_update", state.dtype))
        out = self.shim.raw_state_update(_np(state), _np(x), _np(dt), _np(A), _np(B), _np(C), _np(D), _np(z),
                                         _np(dt_bias), _np(idx, torch.int32), softplus)
        return torch.from_numpy(out)
