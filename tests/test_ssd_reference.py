"""Reference (chunked) SSD against the naive float64 loop: outputs, final states and every gradient."""
import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from mamba_compat import mamba_chunk_scan_combined
from mamba_compat.ops.ssd.naive import ssd_naive
from mamba_compat.ops.ssd.reference import _fwd_op, ssd_chunked

from op_testing import (SCAN_INPUTS, assert_close, compiled_scan_matches_eager, gradcheck_scan, make_problem,
                        opcheck_scan, random_seq_idx)

GRAD_NAMES = SCAN_INPUTS


def run(backend, kw, chunk_size, **extra):
    return mamba_chunk_scan_combined(chunk_size=chunk_size, return_final_states=True, backend=backend, **kw, **extra)


@pytest.mark.parametrize("L", [1, 15, 63, 300])
@pytest.mark.parametrize("chunk_size", [16, 64])
@pytest.mark.parametrize("groups", [1, 2])
def test_forward_matches_naive_float64(L, chunk_size, groups):
    kw = make_problem(b=2, l=L, h=4, p=6, g=groups, n=8, D="hp", seq_idx=random_seq_idx(2, L, 3, seed=L))
    y_ref, s_ref = run("naive", kw, chunk_size, dt_softplus=True)
    y, s = run("reference", kw, chunk_size, dt_softplus=True)
    assert_close("y", y_ref, y, 1e-12)
    assert_close("final_states", s_ref, s, 1e-12)


@pytest.mark.parametrize("options", [
    dict(D=None, z=False, dt_bias=False, init=False),
    dict(D="h", z=True, dt_bias=True, init=False),
    dict(D="hp", z=False, dt_bias=True, init=True),
])
@pytest.mark.parametrize("dt_limit", [(0.0, math.inf), (0.05, 0.8)])
def test_optional_inputs_and_dt_limit(options, dt_limit):
    kw = make_problem(b=2, l=37, h=6, p=4, g=3, n=5, **options)
    y_ref, s_ref = run("naive", kw, 8, dt_softplus=True, dt_limit=dt_limit)
    y, s = run("reference", kw, 8, dt_softplus=True, dt_limit=dt_limit)
    assert_close("y", y_ref, y, 1e-12)
    assert_close("final_states", s_ref, s, 1e-12)


def test_no_softplus_clamps_only_when_limit_given():
    kw = make_problem(l=20, D=None, z=False, dt_bias=False, init=False)
    kw["dt"] = kw["dt"].abs()
    for lim in [(0.0, math.inf), (0.1, 0.3)]:
        y_ref = run("naive", kw, 8, dt_limit=lim)[0]
        assert_close("y", y_ref, run("reference", kw, 8, dt_limit=lim)[0], 1e-12)
    # the limit really acts: a clamped run differs from an unclamped one
    assert (run("reference", kw, 8, dt_limit=(0.1, 0.3))[0] - run("reference", kw, 8)[0]).abs().max() > 1e-3


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-6), (torch.bfloat16, 1e-2), (torch.float16, 2e-3)])
def test_low_precision_inputs_accumulate_in_fp32(dtype, tol):
    kw = make_problem(b=2, l=70, h=4, p=8, g=1, n=16, dtype=dtype, seq_idx=random_seq_idx(2, 70, 2))
    kw64 = {k: (v.double() if v.is_floating_point() else v) for k, v in kw.items()}
    y_ref, s_ref = run("naive", kw64, 32, dt_softplus=True)
    y, s = run("reference", kw, 32, dt_softplus=True)
    assert y.dtype == dtype and s.dtype == torch.float32
    assert_close("y", y_ref, y, tol)
    assert_close("final_states", s_ref, s, tol)


def test_chunk_size_does_not_change_the_result():
    kw = make_problem(l=100, seq_idx=random_seq_idx(2, 100, 4))
    outs = [run("reference", kw, c, dt_softplus=True) for c in (1, 7, 32, 100, 256)]
    for y, s in outs[1:]:
        assert_close("y", outs[0][0], y, 1e-12)
        assert_close("final_states", outs[0][1], s, 1e-12)


def test_seq_idx_equals_separate_sequences():
    """A packed batch with seq_idx gives each sequence's own output; the first one also starts from init."""
    lens = [5, 17, 1, 9]
    kw = make_problem(b=1, l=sum(lens), init=True)
    seq_idx = torch.cat([torch.full((n,), i, dtype=torch.int32) for i, n in enumerate(lens)])[None]
    y, s = run("reference", dict(kw, seq_idx=seq_idx), 8, dt_softplus=True)
    start = 0
    for i, n in enumerate(lens):
        part = {k: (v[:, start:start + n] if k in ("x", "dt", "B", "C", "z") else v) for k, v in kw.items()}
        if i > 0:
            part.pop("initial_states")
        y_i, s_i = run("reference", part, 8, dt_softplus=True)
        assert_close(f"y[seq {i}]", y_i, y[:, start:start + n], 1e-12)
        start += n
    assert_close("final state of the last sequence", s_i, s, 1e-12)


def test_seq_idx_is_about_changes_not_values():
    """0,0,1,1,0,0 has two resets (the state after the last change must not revive the first segment)."""
    kw = make_problem(b=1, l=6, init=False)
    a = torch.tensor([[0, 0, 1, 1, 0, 0]], dtype=torch.int32)
    b = torch.tensor([[0, 0, 1, 1, 2, 2]], dtype=torch.int32)
    ya = run("reference", dict(kw, seq_idx=a), 4)[0]
    yb = run("reference", dict(kw, seq_idx=b), 4)[0]
    assert_close("y", yb, ya, 1e-14)
    assert_close("y vs naive", run("naive", dict(kw, seq_idx=a), 4)[0], ya, 1e-12)


def test_large_decay_is_stable():
    """|dt*A| up to ~1e3 per step and long chunks: finite and equal to the loop."""
    kw = make_problem(b=1, l=200, h=2, p=4, g=1, n=4, D=None, z=False, dt_bias=False, init=True, dtype=torch.float32)
    kw["dt"] = kw["dt"].abs() * 20
    kw["A"] = torch.tensor([-60.0, -0.01])
    y, s = run("reference", kw, 256)
    kw64 = {k: (v.double() if v.is_floating_point() else v) for k, v in kw.items()}
    y_ref, s_ref = run("naive", kw64, 256)
    assert torch.isfinite(y).all() and torch.isfinite(s).all()
    assert_close("y", y_ref, y, 1e-5)
    assert_close("final_states", s_ref, s, 1e-5)


def test_long_sequence_fp32():
    kw = make_problem(b=1, l=4096, h=2, p=4, g=1, n=8, dtype=torch.float32, dt_scale=0.3)
    y, s = run("reference", kw, 64, dt_softplus=True)
    kw64 = {k: (v.double() if v.is_floating_point() else v) for k, v in kw.items()}
    y_ref, s_ref = run("naive", kw64, 64, dt_softplus=True)
    assert_close("y", y_ref, y, 2e-6)
    assert_close("final_states", s_ref, s, 2e-6)


@pytest.mark.parametrize("L,chunk", [(1, 4), (15, 4), (33, 16)])
def test_gradients_match_naive(L, chunk):
    """Every input's gradient, with random gradients on y and on the final state, across resets."""
    base = make_problem(b=2, l=L, h=4, p=3, g=2, n=5, D="hp", seq_idx=random_seq_idx(2, L, 2, seed=1))
    gen = torch.Generator().manual_seed(3)
    dy = torch.randn(base["x"].shape, generator=gen, dtype=torch.float64)
    dfin = torch.randn(base["initial_states"].shape, generator=gen, dtype=torch.float64)
    grads = {}
    for backend in ("naive", "reference"):
        kw = {k: (v.detach().clone().requires_grad_(True) if v.is_floating_point() else v) for k, v in base.items()}
        y, s = run(backend, kw, chunk, dt_softplus=True, dt_limit=(0.01, 5.0))
        torch.autograd.backward([y, s], [dy, dfin])
        grads[backend] = {k: kw[k].grad for k in GRAD_NAMES}
    for k in GRAD_NAMES:
        assert grads["naive"][k] is not None and grads["reference"][k] is not None, k
        assert_close(f"d{k}", grads["naive"][k], grads["reference"][k], 1e-10)


def test_gradient_arriving_only_on_final_state():
    kw = make_problem(l=21, requires_grad=True)
    _, s = run("reference", kw, 8, dt_softplus=True)
    s.sum().backward()
    g_ref = {k: kw[k].grad.clone() for k in ("x", "B", "initial_states")}
    kw2 = {k: (v.detach().clone().requires_grad_(True) if v.is_floating_point() else v) for k, v in kw.items()}
    _, s2 = run("naive", kw2, 8, dt_softplus=True)
    s2.sum().backward()
    for k, g in g_ref.items():
        assert g.abs().sum() > 0
        assert_close(f"d{k}", kw2[k].grad, g, 1e-10)
    assert kw["C"].grad is None or kw["C"].grad.abs().max() == 0  # C only reads the state out


def test_gradcheck_registered_op():
    """float64 gradcheck through the torch.library op (forward op + registered backward op)."""
    gradcheck_scan(_fwd_op)


def test_opcheck_registered_op():
    opcheck_scan(_fwd_op)


def test_torch_compile_fullgraph_cpu():
    """The reference under torch.compile (named: `auto` on CPU is now the cpu backend, compiled in test_ssd_cpu.py)."""
    compiled_scan_matches_eager("reference")


@settings(max_examples=30, deadline=None)
@given(b=st.integers(1, 2), L=st.integers(1, 70), h_per_g=st.integers(1, 3), g=st.integers(1, 2),
       p=st.integers(1, 5), n=st.integers(1, 6), chunk=st.sampled_from([1, 3, 8, 16, 64]),
       resets=st.integers(0, 5), softplus=st.booleans(), seed=st.integers(0, 10_000))
def test_property_reference_equals_naive(b, L, h_per_g, g, p, n, chunk, resets, softplus, seed):
    kw = make_problem(b=b, l=L, h=h_per_g * g, p=p, g=g, n=n, seed=seed,
                      seq_idx=random_seq_idx(b, L, resets, seed=seed))
    if not softplus:
        kw["dt"] = kw["dt"].abs()
        kw.pop("dt_bias")
    y_ref, s_ref = run("naive", kw, chunk, dt_softplus=softplus)
    y, s = run("reference", kw, chunk, dt_softplus=softplus)
    assert_close("y", y_ref, y, 1e-11)
    assert_close("final_states", s_ref, s, 1e-11)


def test_oracle_does_not_share_the_references_dt_processing(monkeypatch):
    """A bug in the reference's dt processing must show against the oracle: break the function's code (so every
    alias of it breaks too) and check that the oracle's output does not move while the reference's does."""
    from mamba_compat.ops.ssd import reference

    kw = make_problem(dtype=torch.float64)
    args = (kw["x"], kw["dt"], kw["A"], kw["B"], kw["C"], 8, kw["D"], kw["z"], kw["dt_bias"], kw["initial_states"],
            None, True, 0.0, math.inf)
    y_oracle, _ = ssd_naive(*args)

    def buggy(dt, dt_bias, dt_softplus, dt_min, dt_max):
        return dt * 1.01

    monkeypatch.setattr(reference.process_dt, "__code__", buggy.__code__)
    y_oracle_after, _ = ssd_naive(*args)
    y_ref, _ = ssd_chunked(*args)
    assert torch.equal(y_oracle_after, y_oracle)
    assert (y_ref - y_oracle).abs().max() > 1e-3
