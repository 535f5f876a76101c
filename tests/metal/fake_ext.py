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


def _native(t, s):
    """An input tensor as the raw buffer of library s (float16 as is, bfloat16 as its uint16 bits)."""
    if t is None:
        return None
    assert t.is_contiguous()
    return t.view(torch.int16).numpy().view(np.uint16) if s.in_kind == "bfloat" else t.numpy()


class FakeMetal:
    def __init__(self, shim, bfloat: bool = False, libs=None):
        """libs: {torch dtype: Shim} of the libraries the glue compiles per input type (SSD_IN_T = half,
        bfloat); a dtype not in it runs on `shim` (the float library) with its inputs converted."""
        self.shim = shim
        self.bfloat = bfloat
        self.libs = dict(libs or {})
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
        s = self.libs.get(in_t)
        if s is not None:  # that dtype's own library: x, B, C, z, y in its input type
            n = lambda t: _native(t, s)  # noqa: E731
            y, fin = s.raw_fwd(n(x), _np(dt), _np(A), n(B), n(C), _np(D), n(z), _np(dt_bias), _np(init),
                               _np(seq, torch.int32), softplus, has_limit, dt_min, dt_max)
            y = torch.from_numpy(y.view(np.int16)).view(torch.bfloat16) if s.in_kind == "bfloat" else torch.from_numpy(y)
            return y, torch.from_numpy(fin)
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
