"""Grouped gated RMSNorm (mamba_compat.ops.rmsnorm): the PyTorch reference against a float64 loop, the Triton
kernels (forward and every gradient, one- and two-pass) against the reference, the registered ops (opcheck),
dispatch and the module.

Runs on CUDA when there is one, else on CPU with the kernels interpreted (TRITON_INTERPRET=1, conftest.py).
Errors are max |a - ref| / max |ref| against a float64 evaluation of the same (rounded) inputs; tolerances
sit a few times above the errors measured (see TOL).
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import mamba_compat
from mamba_compat.backends import BackendUnavailable
from mamba_compat.modules.rmsnorm_gated import RMSNormGated
from mamba_compat.ops import rmsnorm as ops
from mamba_compat.ops.rmsnorm import reference as ref
from mamba_compat.ops.rmsnorm import triton as tri

from op_testing import errors_vs_float64, max_scaled_error, nan_alloc

DEV = "cuda" if torch.cuda.is_available() else "cpu"
# measured max errors over this file's shapes and more (CPU interpreter): fp32 9.3e-7 (dx), 2.9e-7 (others);
# fp16 4.6e-4; bf16 7.1e-3, one ulp (2^-7): the interpreter rounds fp32 to bf16 by truncation, a GPU to nearest
# (half that); fp64 1.5e-15 on the CPU, 1.9e-12 on an H200 (approximate fp64 rsqrt)
TOL = {torch.float32: 3e-6, torch.float16: 2e-3, torch.bfloat16: 1.6e-2, torch.float64: 1e-11}


err = max_scaled_error


@pytest.fixture(autouse=True)
def _nan_outputs(monkeypatch):
    """Kernel outputs start as NaN: an element a kernel forgets to write fails the comparison."""
    monkeypatch.setattr(tri, "_alloc", nan_alloc)


def naive_norm(x, w, z, eps, gs, norm_before_gate):
    """float64 loop over rows and groups."""
    x2 = x.double().cpu().reshape(-1, x.shape[-1])
    z2 = None if z is None else z.double().cpu().reshape(-1, x.shape[-1])
    w = w.double().cpu()
    out = torch.empty_like(x2)
    for r in range(x2.shape[0]):
        for g0 in range(0, x2.shape[1], gs):
            sl = slice(g0, g0 + gs)
            u = x2[r, sl]
            if z2 is not None and not norm_before_gate:
                u = u * z2[r, sl] * torch.sigmoid(z2[r, sl])
            o = u / torch.sqrt((u * u).sum() / gs + eps) * w[sl]
            if z2 is not None and norm_before_gate:
                o = o * z2[r, sl] * torch.sigmoid(z2[r, sl])
            out[r, sl] = o
    return out.reshape(x.shape)


def make(shape, ngroups, dtype, z=True, strided=True, seed=0):
    """x contiguous (as the scan's output), z a slice of a wider tensor (as Mamba2's split of in_proj's output)."""
    gen = torch.Generator().manual_seed(seed)
    d = shape[-1]
    x = (2 * torch.randn(shape, generator=gen)).to(DEV, dtype)
    zt = None
    if z:
        wide = torch.randn(*shape[:-1], d + 9, generator=gen)
        zt = (wide[..., 5:5 + d] if strided else wide[..., :d].contiguous()).to(DEV, dtype)
    w = (1 + 0.3 * torch.randn(d, generator=gen)).to(DEV, dtype)
    return x, w, zt, d // ngroups


@pytest.mark.parametrize("norm_before_gate", [True, False])
@pytest.mark.parametrize("z", [True, False])
def test_reference_vs_loop(norm_before_gate, z):
    x, w, zt, gs = make((3, 4, 12), 3, torch.float64, z=z, seed=1)
    got = ref.rmsnorm_gated(x, w, zt, 1e-5, gs, norm_before_gate)
    assert err(got, naive_norm(x, w, zt, 1e-5, gs, norm_before_gate)) < 1e-14


def check_triton(x, w, z, gs, nbg, tol, eps=1e-5, seed=0):
    y, e = errors_vs_float64(lambda *ins: ops.rmsnorm_gated(*ins, eps, gs, nbg, backend="triton"),
                             lambda *ins: ref.rmsnorm_gated(*ins, eps, gs, nbg), (x, w, z), ("dx", "dweight", "dz"),
                             seed)
    assert y.dtype == x.dtype and y.shape == x.shape
    bad = {k: v for k, v in e.items() if not v <= tol}
    assert not bad, f"errors {e} over tolerance {tol}"
    return e


CASES = [((7, 24), 1), ((7, 24), 3), ((2, 5, 40), 2), ((1, 20), 1), ((300, 32), 1), ((3, 2, 6), 3)]


@pytest.mark.parametrize("shape,ngroups", CASES)
@pytest.mark.parametrize("norm_before_gate", [True, False])
@pytest.mark.parametrize("z", [True, False])
def test_triton_fp32(shape, ngroups, norm_before_gate, z):
    """Groups of 24, 8, 20, 20, 32 and 2 channels (not powers of two: masked columns); 1 to 300 rows (several
    row tiles per backward program)."""
    x, w, zt, gs = make(shape, ngroups, torch.float32, z=z, seed=len(shape) + ngroups)
    check_triton(x, w, zt, gs, norm_before_gate, TOL[torch.float32])


def test_triton_group_size_one():
    """Groups of one channel: dx = rstd * w*g * eps / (u^2 + eps) is a difference of nearly equal terms in any
    fp32 evaluation. Measured dx errors (this seed): fp32 reference 5.5e-5, Triton 1.2e-4 (CPU) and 2.8e-4 (an
    H200: its rsqrt and division are approximate); the other outputs agree to fp32 rounding."""
    x, w, zt, gs = make((3, 2, 6), 6, torch.float32, seed=9)
    leaves = [t.detach().clone().requires_grad_(True) for t in (x, w, zt)]
    y = ops.rmsnorm_gated(*leaves, 1e-5, gs, True, backend="triton")
    g = torch.autograd.grad(y, leaves, torch.ones_like(y))
    l64 = [t.detach().double().requires_grad_(True) for t in (x, w, zt)]
    y64 = ref.rmsnorm_gated(*l64, 1e-5, gs, True)
    g64 = torch.autograd.grad(y64, l64, torch.ones_like(y64))
    assert err(y, y64) <= TOL[torch.float32]
    for name, a, r, tol in zip(("dx", "dweight", "dz"), g, g64, (1.5e-3, TOL[torch.float32], TOL[torch.float32])):
        assert err(a, r) <= tol, name


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("norm_before_gate", [True, False])
def test_triton_16bit(dtype, norm_before_gate):
    x, w, zt, gs = make((2, 9, 48), 2, dtype, seed=3)
    check_triton(x, w, zt, gs, norm_before_gate, TOL[dtype])


def test_triton_fp64():
    x, w, zt, gs = make((5, 16), 2, torch.float64, seed=4)
    check_triton(x, w, zt, gs, False, TOL[torch.float64])


@pytest.mark.parametrize("gs", [24, 20])
@pytest.mark.parametrize("norm_before_gate", [True, False])
def test_triton_two_pass(monkeypatch, gs, norm_before_gate):
    """Groups wider than the register tile (the cap forced to 8 columns): two passes over chunks, the last
    one partial for 20."""
    monkeypatch.setenv("MAMBA_COMPAT_NORM_BLOCK", "8")
    x, w, zt, _ = make((260, 2 * gs), 2, torch.float32, seed=gs)  # 5 row tiles of 64 over 3 programs
    check_triton(x, w, zt, gs, norm_before_gate, TOL[torch.float32])
    check_triton(x, w, None, gs, norm_before_gate, TOL[torch.float32])


def test_triton_leading_dims_not_mergeable():
    """x (..., D) whose leading dims cannot be flattened into one row stride (a transposed view): copied."""
    x, w, zt, gs = make((4, 3, 16), 2, torch.float32, seed=6)
    check_triton(x.transpose(0, 1), w, zt.transpose(0, 1), gs, True, TOL[torch.float32])


def test_triton_large_eps():
    x, w, zt, gs = make((6, 16), 1, torch.float32, seed=7)
    check_triton(0.01 * x, w, zt, gs, False, TOL[torch.float32], eps=0.1)


def test_opcheck_norm_op():
    x, w, zt, gs = make((4, 12), 2, torch.float32, strided=False, seed=8)
    x.requires_grad_(True)
    w.requires_grad_(True)
    zt.requires_grad_(True)
    torch.library.opcheck(tri.rmsnorm_fwd_op, (x, w, zt, 1e-5, gs, False))
    torch.library.opcheck(tri.rmsnorm_fwd_op, (x, w, None, 1e-5, gs, True))


def test_module_dispatches(monkeypatch):
    x, w, zt, gs = make((2, 3, 16), 2, torch.float32, seed=9)
    m = RMSNormGated(16, group_size=gs, norm_before_gate=False).to(DEV)
    with torch.no_grad():
        m.weight.copy_(w)
    want = ref.rmsnorm_gated(x, w, zt, 1e-5, gs, False)
    mamba_compat.set_backend("triton")
    assert err(m(x, zt), want) <= TOL[torch.float32]
    mamba_compat.set_backend("reference")
    assert torch.equal(m(x, zt), want)
    mamba_compat.set_backend("naive")
    assert torch.equal(m(x, zt), want)
    mamba_compat.set_backend(None)
    if DEV == "cpu":
        assert torch.equal(m(x, zt), want)  # auto on CPU: the reference
        monkeypatch.setenv("TRITON_INTERPRET", "0")
        with pytest.raises(BackendUnavailable):
            ops.rmsnorm_gated(x, w, zt, backend="triton")
        with pytest.raises(BackendUnavailable):
            ops.rmsnorm_gated(x, w, zt, backend="metal")


def test_argument_errors():
    x, w, zt, gs = make((2, 12), 2, torch.float32, seed=10)
    with pytest.raises(ValueError, match="group_size"):
        ops.rmsnorm_gated(x, w, zt, group_size=5)
    with pytest.raises(ValueError, match="weight"):
        ops.rmsnorm_gated(x, w[:6], zt)
    with pytest.raises(ValueError, match="z"):
        ops.rmsnorm_gated(x, w, zt[:1])


def test_compile_traces_the_op():
    x, w, zt, gs = make((3, 16), 2, torch.float32, seed=11)
    xl = x.clone().requires_grad_(True)

    def f(x):
        return F.silu(ops.rmsnorm_gated(x, w, zt, 1e-5, gs, False, backend="triton"))

    y = f(xl)
    yc = torch.compile(f, fullgraph=True, backend="inductor" if DEV == "cuda" else "aot_eager")(xl)
    assert err(yc, y) <= 1e-6
    (g,) = torch.autograd.grad(y.sum(), xl)
    (gc,) = torch.autograd.grad(yc.sum(), xl)
    assert err(gc, g) <= 1e-6
