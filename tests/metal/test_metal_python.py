"""mamba_compat/ops/ssd/metal.py and state_update/metal.py end to end on CPU tensors, with the extension
replaced by the shim-compiled kernels (fake_ext.FakeMetal): input preparation (dtypes, D (H,) -> (H, P),
int32 seq_idx, dt_limit encoding), the gradient reductions, the fp32-copy path of the decode step, and the
embedded shader source that setup.py generates."""
from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import torch

import mamba_compat.ops.ssd.metal as ssd_metal
import mamba_compat.ops.state_update.metal as su_metal
from fake_ext import FakeMetal
from mamba_compat.ops.ssd.naive import ssd_naive
from mamba_compat.ops.state_update.reference import state_update as ref_state_update
from oracle import GRAD_NAMES, assert_close, make_inputs
from shim_build import METAL_DIR, SHIM_DIR, compiler


@pytest.fixture
def fake(shim, monkeypatch):
    ext = FakeMetal(shim)
    monkeypatch.setattr(ssd_metal, "_metal", ext)
    return ext


def _torch_inputs(inp, dtype=torch.float32):
    t = {k: (None if v is None else torch.from_numpy(v)) for k, v in inp.items()}
    for k in ("x", "B", "C", "z"):
        if t[k] is not None:
            t[k] = t[k].to(dtype)
    return t


def _call(fn, t, *extra, chunk=64, softplus=True, limit=(0.0, math.inf)):
    return fn(*extra, t["x"], t["dt"], t["A"], t["B"], t["C"], chunk, t["D"], t["z"], t["dt_bias"],
              t["initial_states"], t["seq_idx"], softplus, *limit)


@pytest.mark.parametrize("limit", [(0.0, math.inf), (0.05, 2.0)], ids=["nolimit", "limit"])
def test_python_forward_and_backward(fake, limit):
    inp = make_inputs(21, 2, 29, 4, 8, 2, 16, D="h")
    t = _torch_inputs(inp)
    y, fin = _call(ssd_metal.ssd_fwd, t, limit=limit)
    t64 = {k: (None if v is None else (v.double() if v.is_floating_point() else v)) for k, v in t.items()}
    y_ref, fin_ref = _call(ssd_naive, t64, limit=limit)
    assert y.dtype == torch.float32 and fin.dtype == torch.float32
    assert_close("y", y.numpy(), y_ref.numpy())
    assert_close("final", fin.numpy(), fin_ref.numpy())

    rng = np.random.default_rng(22)
    dy = torch.from_numpy(rng.standard_normal(y.shape).astype(np.float32))
    dfin = torch.from_numpy(rng.standard_normal(fin.shape).astype(np.float32))
    grads = _call(ssd_metal.ssd_bwd, t, dy, dfin, limit=limit)
    leaves = {k: (v.clone().requires_grad_() if v is not None and v.is_floating_point() else v)
              for k, v in t64.items()}
    y2, f2 = _call(ssd_naive, leaves, limit=limit)
    ((y2 * dy.double()).sum() + (f2 * dfin.double()).sum()).backward()
    for name, g in zip(GRAD_NAMES, grads):
        ref = leaves[name]
        if ref is None:
            assert g is None, name
            continue
        assert g.shape == ref.shape, name
        assert_close(f"d{name}", g.numpy(), ref.grad.numpy(), rtol=5e-5)


def test_python_half_inputs_stay_half(fake):
    inp = make_inputs(23, 1, 20, 2, 8, 1, 16)
    t = _torch_inputs(inp, torch.float16)
    y, fin = _call(ssd_metal.ssd_fwd, t)
    assert fake.calls[-1] == ("ssd_fwd", torch.float16)  # the kernels read half natively
    assert y.dtype == torch.float16 and fin.dtype == torch.float32
    t64 = {k: (None if v is None else (v.double() if v.is_floating_point() else v)) for k, v in t.items()}
    y_ref, fin_ref = _call(ssd_naive, t64)
    assert_close("y", y.float().numpy(), y_ref.numpy(), rtol=2e-3)
    assert_close("final", fin.numpy(), fin_ref.numpy(), rtol=1e-4)


def test_python_bfloat16_falls_back_to_fp32_without_metal_bfloat(fake, monkeypatch):
    """Without Metal bfloat, bf16 inputs run in fp32: said once per process by a warning, not silently."""
    import warnings

    monkeypatch.setattr(ssd_metal, "_WARNED_FP32", set())
    monkeypatch.setattr(ssd_metal, "_BFLOAT_OK", {})  # keyed by id(extension): no stale entry of another fake
    inp = make_inputs(24, 1, 20, 2, 8, 1, 16)
    t = _torch_inputs(inp, torch.bfloat16)
    with pytest.warns(RuntimeWarning, match=r"torch.bfloat16 inputs are converted to float32 .*macOS 14"):
        y, _ = _call(ssd_metal.ssd_fwd, t)
    assert fake.calls[-1] == ("ssd_fwd", torch.float32) and y.dtype == torch.bfloat16
    t64 = {k: (None if v is None else (v.double() if v.is_floating_point() else v)) for k, v in t.items()}
    y_ref, _ = _call(ssd_naive, t64)
    assert_close("y", y.float().numpy(), y_ref.numpy(), rtol=1e-2)  # one rounding of y to bf16
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the second call does not warn again
        _call(ssd_metal.ssd_fwd, t)
    assert fake.calls[-1] == ("ssd_fwd", torch.float32)


def test_python_bfloat16_runs_the_bfloat_library(shim, shim_bfloat, monkeypatch):
    """With Metal bfloat, bf16 inputs go to the library compiled with SSD_IN_T=bfloat (as the glue does):
    y comes back bf16, as the float library's y rounded once to nearest even, within bf16 rounding of the
    float64 oracle."""
    from shim_build import from_bf16, to_bf16
    from test_shim_schedules import TOL_BF16_Y

    monkeypatch.setattr(ssd_metal, "_WARNED_FP32", set())
    monkeypatch.setattr(ssd_metal, "_BFLOAT_OK", {})
    fake = FakeMetal(shim, bfloat=True, libs={torch.bfloat16: shim_bfloat})
    monkeypatch.setattr(ssd_metal, "_metal", fake)
    inp = make_inputs(25, 2, 29, 4, 8, 2, 16, D="h")
    t = _torch_inputs(inp, torch.bfloat16)
    y, fin = _call(ssd_metal.ssd_fwd, t)
    assert fake.calls[-1] == ("ssd_fwd", torch.bfloat16) and y.dtype == torch.bfloat16
    t32 = {k: (None if v is None else (v.float() if v.is_floating_point() else v)) for k, v in t.items()}
    y32, fin32 = _call(ssd_metal.ssd_fwd, t32)  # the float library on the same rounded inputs
    assert np.array_equal(y.view(torch.int16).numpy().view(np.uint16), to_bf16(y32.numpy()))
    assert torch.equal(fin, fin32)
    t64 = {k: (None if v is None else (v.double() if v.is_floating_point() else v)) for k, v in t.items()}
    y_ref, fin_ref = _call(ssd_naive, t64)
    assert_close("y", from_bf16(y.view(torch.int16).numpy().view(np.uint16)), y_ref.numpy(), rtol=TOL_BF16_Y)
    assert_close("final", fin.numpy(), fin_ref.numpy())


def test_python_no_fp32_warning_where_bfloat_or_native(shim, monkeypatch):
    import warnings

    monkeypatch.setattr(ssd_metal, "_WARNED_FP32", set())
    monkeypatch.setattr(ssd_metal, "_BFLOAT_OK", {})  # keyed by id(extension): no stale entry of another fake
    monkeypatch.setattr(ssd_metal, "_metal", FakeMetal(shim, bfloat=True))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ssd_metal._in_dtype(torch.bfloat16) is torch.bfloat16
        assert ssd_metal._in_dtype(torch.float16) is torch.float16
        assert ssd_metal._in_dtype(torch.float32) is torch.float32
    with pytest.warns(RuntimeWarning, match="float64 inputs are converted to float32"):
        assert ssd_metal._in_dtype(torch.float64) is torch.float32


def test_python_decode_step_fp32_copy_path(shim, monkeypatch):
    """A bfloat16, non-contiguous state goes through an fp32 copy; rows of the cache not indexed stay put."""
    monkeypatch.setattr(ssd_metal, "_metal", FakeMetal(shim))
    rng = np.random.default_rng(25)
    r = lambda *s: torch.from_numpy(rng.standard_normal(s).astype(np.float32))  # noqa: E731
    S, b, H, P, G, N = 5, 3, 4, 6, 2, 24
    base = r(S, H, N, P).to(torch.bfloat16)
    state = base.transpose(2, 3)  # (S, H, P, N), non-contiguous
    ref_state = state.float().clone()
    A = (-torch.exp(r(H) * 0.5))[:, None, None].expand(H, P, N)  # broadcast view, as Mamba2 passes it
    dt = r(b, H)[:, :, None].expand(b, H, P)
    args = (r(b, H, P), dt, A, r(b, G, N), r(b, G, N), r(H, P), r(b, H, P), r(H)[:, None].expand(H, P))
    idx = torch.tensor([3, -1, 0])
    out = su_metal.state_update(state, *args, True, idx)
    ref = ref_state_update(ref_state, *args, True, idx)
    assert_close("out", out.float().numpy(), ref.double().numpy())
    assert_close("state", state.float().numpy(), ref_state.to(torch.bfloat16).float().double().numpy(), rtol=1e-2)
    for row in (1, 2, 4):
        assert torch.equal(state[row], base.transpose(2, 3)[row])


def test_embedded_source_is_self_contained(tmp_path):
    """setup.py's generated header holds the whole shader: joined, it compiles against the shim alone
    (no csrc/metal include path) and defines every kernel the launch plan names."""
    cxx = compiler()
    if cxx is None:
        pytest.skip("no C++ compiler")
    sys.path.insert(0, str(METAL_DIR))
    try:
        from embed_msl import header_text, msl_source
    finally:
        sys.path.pop(0)
    header = tmp_path / "msl_source.h"
    header.write_text(header_text())
    prog = tmp_path / "dump.cpp"
    prog.write_text('#include <cstdio>\n#include "msl_source.h"\nint main() { for (int i = 0; i < kSsdMslPieceCount; '
                    '++i) std::fputs(kSsdMslPieces[i], stdout); }\n')
    exe = tmp_path / "dump"
    subprocess.run([cxx, "-std=c++17", str(prog), f"-I{tmp_path}", "-o", str(exe)], check=True)
    text = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout
    assert text == msl_source()
    assert '#include "' not in text
    plan = (METAL_DIR / "ssd_host.h").read_text()
    import re
    for name in set(re.findall(r'dispatch\("(\w+)"', plan)):
        assert f"kernel void {name}(" in text, name
    import msl_kernels

    single = tmp_path / "all.metal"
    single.write_text(msl_kernels.rewrite_for_shim(text, "all.metal", 0)[0])  # as shim_build compiles sources
    subprocess.run([cxx, "-std=c++20", "-fsyntax-only", "-Werror=attributes", "-x", "c++", f"-I{SHIM_DIR}",
                    str(single)], check=True)
