"""The real Metal extension on an Apple GPU against the float64 oracle (run on the CPU). Skipped unless
torch has MPS and mamba_compat._metal is built (macOS: `pip install -e . --no-build-isolation`).

    python -m pytest tests/metal/test_metal_mps.py -q
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import mamba_compat
from mamba_compat.ops.ssd import mamba_chunk_scan_combined
from mamba_compat.ops.state_update import selective_state_update
from oracle import GRAD_NAMES, assert_close, make_inputs, naive_fwd, naive_grads

pytestmark = pytest.mark.skipif(not (torch.backends.mps.is_available()), reason="needs an Apple GPU (MPS)")


@pytest.fixture(autouse=True)
def _need_extension():
    try:
        import mamba_compat._metal  # noqa: F401
    except ImportError as e:
        pytest.skip(f"mamba_compat._metal is not built: {e}")


def _mps(inp, dtype=torch.float32):
    out = {}
    for k, v in inp.items():
        if v is None:
            out[k] = None
        elif v.dtype == np.int32:
            out[k] = torch.from_numpy(v).to("mps")
        else:
            t = torch.from_numpy(v).to("mps")
            out[k] = t.to(dtype) if k in ("x", "B", "C", "z") else t
    return out


def _scan(t, **kw):
    return mamba_chunk_scan_combined(t["x"], t["dt"], t["A"], t["B"], t["C"], 64, D=t["D"], z=t["z"],
                                     dt_bias=t["dt_bias"], initial_states=t["initial_states"], seq_idx=t["seq_idx"],
                                     return_final_states=True, backend="metal", **kw)


SHAPES = [(1, 1, 2, 4, 1, 8), (2, 37, 4, 8, 2, 16), (2, 300, 4, 64, 1, 64), (1, 130, 8, 32, 2, 128)]


def test_auto_picks_metal():
    x = torch.zeros(1, device="mps")
    assert mamba_compat.backends.resolve(x.device) == "metal"


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_forward(shape):
    inp = make_inputs(1, *shape)
    y, fin = _scan(_mps(inp), dt_softplus=True)
    y_ref, fin_ref = naive_fwd(inp, True)
    assert_close("y", y.cpu().numpy(), y_ref, rtol=1e-4)
    assert_close("final", fin.cpu().numpy(), fin_ref, rtol=1e-4)


@pytest.mark.parametrize("dtype,rtol", [(torch.float16, 3e-2), (torch.bfloat16, 5e-2)], ids=["fp16", "bf16"])
def test_forward_low_precision(dtype, rtol):
    inp = make_inputs(2, 2, 100, 4, 32, 1, 64)
    y, fin = _scan(_mps(inp, dtype), dt_softplus=True)
    assert y.dtype == dtype
    t = _mps(inp, dtype)
    ref = {k: (None if v is None else v.cpu().double().numpy() if v.is_floating_point() else v.cpu().numpy())
           for k, v in t.items()}  # the oracle sees the same rounded inputs
    y_ref, fin_ref = naive_fwd(ref, True)
    assert_close("y", y.float().cpu().numpy(), y_ref, rtol=rtol)
    assert_close("final", fin.cpu().numpy(), fin_ref, rtol=rtol)


@pytest.mark.parametrize("shape", SHAPES[1:3], ids=str)
def test_backward(shape):
    inp = make_inputs(3, *shape)
    t = {k: (v.requires_grad_() if v is not None and v.is_floating_point() else v) for k, v in _mps(inp).items()}
    y, fin = _scan(t, dt_softplus=True, dt_limit=(0.01, 5.0))
    rng = np.random.default_rng(4)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dfin = rng.standard_normal(fin.shape).astype(np.float32)
    ((y * torch.from_numpy(dy).to("mps")).sum() + (fin * torch.from_numpy(dfin).to("mps")).sum()).backward()
    refs = naive_grads(inp, dy, dfin, True, 0.01, 5.0)
    for name, r in zip(GRAD_NAMES, refs):
        assert_close(f"d{name}", t[name].grad.cpu().numpy(), r, rtol=2e-4)


def test_opcheck():
    inp = make_inputs(5, 1, 40, 2, 8, 1, 16)
    t = _mps(inp)
    from mamba_compat.ops.ssd import metal
    args = (t["x"], t["dt"], t["A"], t["B"], t["C"], 64, t["D"], t["z"], t["dt_bias"], t["initial_states"],
            t["seq_idx"], True, 0.0, math.inf)
    torch.library.opcheck(metal._fwd_op, args, test_utils=("test_schema", "test_faketensor"))


@pytest.mark.parametrize("with_idx", [False, True])
def test_decode_step(with_idx):
    rng = np.random.default_rng(6)
    r = lambda *s: torch.from_numpy(rng.standard_normal(s).astype(np.float32))  # noqa: E731
    S, b, H, P, G, N = 6, 3, 4, 64, 2, 64
    state = r(S if with_idx else b, H, P, N)
    idx = torch.tensor([4, -1, 0], dtype=torch.int32) if with_idx else None
    A = (-torch.exp(r(H)))[:, None, None].expand(H, P, N)
    args = (r(b, H, P), r(b, H, P), A, r(b, G, N), r(b, G, N), r(H, P), r(b, H, P), r(H, P))
    ref_state = state.clone()
    ref = selective_state_update(ref_state, *args, dt_softplus=True, state_batch_indices=idx, backend="reference")
    st = state.to("mps")
    out = selective_state_update(st, *[a.to("mps") for a in args], dt_softplus=True,
                                 state_batch_indices=None if idx is None else idx.to("mps"), backend="metal")
    assert_close("out", out.cpu().numpy(), ref.double().numpy(), rtol=1e-4)
    assert_close("state", st.cpu().numpy(), ref_state.double().numpy(), rtol=1e-4)
