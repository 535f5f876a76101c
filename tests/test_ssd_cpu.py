"""The `cpu` SSD backend (hand-written backward) against the naive float64 loop and the reference: outputs, final
states and every gradient, with seq_idx resets, initial states, z, D, ragged last chunks, groups; float64 gradcheck
and opcheck of its registered op; torch.compile. Float32 bounds are a few times the error measured here (run with
MAMBA_COMPAT_RECORD_ERRORS=/tmp/err.jsonl, then `python bench/tolerances.py /tmp/err.jsonl`)."""

import pytest
import torch

from mamba_compat import mamba_chunk_scan_combined
from mamba_compat.ops.ssd import cpu
from mamba_compat.ops.ssd.cpu import _fwd_op

from op_testing import (SCAN_INPUTS, assert_close, compiled_scan_matches_eager, gradcheck_scan, make_problem,
                        opcheck_scan, random_seq_idx)

GRAD_NAMES = SCAN_INPUTS


def run(backend, kw, chunk_size, **extra):
    return mamba_chunk_scan_combined(chunk_size=chunk_size, return_final_states=True, backend=backend, **kw, **extra)


def outputs_and_grads(backend, base, chunk, dy, dfin, **extra):
    kw = {k: (v.detach().clone().requires_grad_(True) if v.is_floating_point() else v) for k, v in base.items()}
    y, s = run(backend, kw, chunk, **extra)
    torch.autograd.backward([y, s], [dy.to(y.dtype), dfin.to(s.dtype)])
    return y, s, {k: kw[k].grad for k in GRAD_NAMES if k in kw}


def random_cotangents(base, seed=3):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(base["x"].shape, generator=gen, dtype=torch.float64),
            torch.randn(base["x"].shape[:1] + base["x"].shape[2:] + base["B"].shape[-1:], generator=gen,
                        dtype=torch.float64))


@pytest.mark.parametrize("L,chunk,groups,D,resets", [(1, 4, 1, "h", 0), (15, 4, 2, "hp", 2), (33, 16, 2, "h", 3),
                                                     (64, 64, 1, "hp", 0), (70, 16, 1, "h", 4), (63, 64, 2, "h", 1)])
def test_float64_matches_naive(L, chunk, groups, D, resets):
    """Forward, final state and every gradient (random cotangents on y and the final state) in float64."""
    base = make_problem(b=2, l=L, h=4, p=3, g=groups, n=5, D=D,
                        seq_idx=random_seq_idx(2, L, resets, seed=1) if resets else None)
    dy, dfin = random_cotangents(base)
    ref = outputs_and_grads("naive", base, chunk, dy, dfin, dt_softplus=True, dt_limit=(0.01, 5.0))
    out = outputs_and_grads("cpu", base, chunk, dy, dfin, dt_softplus=True, dt_limit=(0.01, 5.0))
    assert_close("y", ref[0], out[0], 1e-12)
    assert_close("final_states", ref[1], out[1], 1e-12)
    for k in GRAD_NAMES:
        assert_close(f"d{k}", ref[2][k], out[2][k], 1e-11)


@pytest.mark.parametrize("options", [dict(D=None, z=False, dt_bias=False, init=False), dict(D="hp", init=False),
                                     dict(z=False)])
@pytest.mark.parametrize("softplus", [True, False])
def test_optional_inputs(options, softplus):
    base = make_problem(b=2, l=21, h=4, p=4, g=2, n=3, **options)
    if not softplus:
        base["dt"] = base["dt"].abs()
    dy, dfin = random_cotangents(base)
    ref = outputs_and_grads("naive", base, 8, dy, dfin, dt_softplus=softplus)
    out = outputs_and_grads("cpu", base, 8, dy, dfin, dt_softplus=softplus)
    assert_close("y", ref[0], out[0], 1e-12)
    assert_close("final_states", ref[1], out[1], 1e-12)
    for k, g in ref[2].items():
        assert_close(f"d{k}", g, out[2][k], 1e-11)


@pytest.mark.parametrize("L,chunk", [(100, 32), (257, 64)])
def test_float32_vs_float64_oracle_and_reference(L, chunk):
    """fp32 inputs vs the float64 oracle and vs the reference (forward and every gradient), with resets, initial
    states, z and a ragged last chunk."""
    base = make_problem(b=2, l=L, h=4, p=8, g=2, n=16, D="hp", dtype=torch.float32,
                        seq_idx=random_seq_idx(2, L, 3, seed=2))
    base64 = {k: (v.double() if v.is_floating_point() else v) for k, v in base.items()}
    dy, dfin = random_cotangents(base)
    oracle = outputs_and_grads("naive", base64, chunk, dy, dfin, dt_softplus=True)
    refr = outputs_and_grads("reference", base, chunk, dy, dfin, dt_softplus=True)
    out = outputs_and_grads("cpu", base, chunk, dy, dfin, dt_softplus=True)
    assert out[0].dtype == torch.float32 and out[1].dtype == torch.float32
    assert_close("y", oracle[0], out[0], 5e-7)  # measured 1.0e-7 (the reference: ~1e-6 on some gradients)
    assert_close("final_states", oracle[1], out[1], 5e-7)
    for k in GRAD_NAMES:
        assert out[2][k].dtype == base[k].dtype
        assert_close(f"d{k}", oracle[2][k], out[2][k], 1e-6)  # measured <= 1.6e-7
        assert_close(f"d{k} vs reference", refr[2][k], out[2][k], 4e-6)  # measured <= 1.3e-6 (the reference's)


@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 1e-2), (torch.float16, 2e-3)])
def test_low_precision_inputs(dtype, tol):
    kw = make_problem(b=2, l=70, h=4, p=8, g=1, n=16, dtype=dtype, seq_idx=random_seq_idx(2, 70, 2))
    kw64 = {k: (v.double() if v.is_floating_point() else v) for k, v in kw.items()}
    y_ref, s_ref = run("naive", kw64, 32, dt_softplus=True)
    y, s = run("cpu", kw, 32, dt_softplus=True)
    assert y.dtype == dtype and s.dtype == torch.float32
    assert_close("y", y_ref, y, tol)
    assert_close("final_states", s_ref, s, tol)


def test_large_decay_fp32():
    """|dt*A| up to ~1e3 per step, chunks of 200 (segment sums to ~-1e5, decays flushed under exp(-60)): finite and
    equal to the float64 loop, forward and gradients."""
    base = make_problem(b=1, l=200, h=2, p=4, g=1, n=4, D=None, z=False, dt_bias=False, init=True,
                        dtype=torch.float32)
    base["dt"] = base["dt"].abs() * 20
    base["A"] = torch.tensor([-60.0, -0.01])
    base64 = {k: (v.double() if v.is_floating_point() else v) for k, v in base.items()}
    dy, dfin = random_cotangents(base)
    oracle = outputs_and_grads("naive", base64, 256, dy, dfin)
    out = outputs_and_grads("cpu", base, 256, dy, dfin)
    assert torch.isfinite(out[0]).all() and torch.isfinite(out[1]).all()
    assert_close("y", oracle[0], out[0], 5e-7)  # measured 8e-8
    assert_close("final_states", oracle[1], out[1], 5e-7)
    for k, g in oracle[2].items():
        assert_close(f"d{k}", g, out[2][k], 1e-5)  # measured <= 2.7e-6 (dA)


def test_gradient_arriving_only_on_final_state():
    kw = make_problem(l=21, requires_grad=True)
    _, s = run("cpu", kw, 8, dt_softplus=True)
    s.sum().backward()
    kw2 = {k: (v.detach().clone().requires_grad_(True) if v.is_floating_point() else v) for k, v in kw.items()}
    _, s2 = run("naive", kw2, 8, dt_softplus=True)
    s2.sum().backward()
    for k in ("x", "dt", "A", "B", "initial_states"):
        assert_close(f"d{k}", kw2[k].grad, kw[k].grad, 1e-11)
    assert kw["C"].grad is None or kw["C"].grad.abs().max() == 0  # C only reads the state out


def test_chunk_length_does_not_change_the_result():
    kw = make_problem(l=100, seq_idx=random_seq_idx(2, 100, 4))
    outs = [run("cpu", kw, c, dt_softplus=True) for c in (1, 7, 32, 100, 256)]
    for y, s in outs[1:]:
        assert_close("y", outs[0][0], y, 1e-12)
        assert_close("final_states", outs[0][1], s, 1e-12)


def test_every_allocation_is_written(monkeypatch):
    """torch.empty filled with NaN inside the backend (forward and backward): an unwritten element would show."""
    real_empty = torch.empty

    def nan_empty(*a, **k):
        t = real_empty(*a, **k)
        return t.fill_(float("nan")) if t.is_floating_point() else t

    monkeypatch.setattr(cpu.torch, "empty", nan_empty)
    base = make_problem(b=2, l=37, h=4, p=3, g=2, n=5, seq_idx=random_seq_idx(2, 37, 2))
    dy, dfin = random_cotangents(base)
    out = outputs_and_grads("cpu", base, 16, dy, dfin, dt_softplus=True)
    monkeypatch.undo()
    ref = outputs_and_grads("naive", base, 16, dy, dfin, dt_softplus=True)
    assert_close("y", ref[0], out[0], 1e-12)
    for k in GRAD_NAMES:
        assert_close(f"d{k}", ref[2][k], out[2][k], 1e-11)


@pytest.mark.parametrize("eager", [True, False])
def test_gradcheck_float64(eager):
    """float64 gradcheck of the eager autograd path and of the registered op (forward op + backward op)."""
    gradcheck_scan(cpu.chunk_scan if eager else _fwd_op)


def test_opcheck_registered_op():
    opcheck_scan(_fwd_op)


def test_torch_compile_fullgraph_matches_eager():
    compiled_scan_matches_eager("cpu")

