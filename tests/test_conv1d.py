"""Causal depthwise conv1d (mamba_compat.ops.conv1d): the PyTorch reference against a float64 loop, the Triton
kernels (forward, every gradient, the decode update) against the reference, the registered ops (opcheck),
dispatch, and a Mamba2 layer with backend triton against the reference layer.

Runs on CUDA when there is one, else on CPU with the kernels interpreted (TRITON_INTERPRET=1, conftest.py);
shapes are small for the interpreter. Errors are max |a - ref| / max |ref| against a float64 evaluation of
the same (rounded) inputs; tolerances sit a few times above the errors measured (see TOL).
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import mamba_compat
from mamba_compat import Mamba2
from mamba_compat.backends import BackendUnavailable
from mamba_compat.ops import conv1d as ops
from mamba_compat.ops.conv1d import reference as ref
from mamba_compat.ops.conv1d import triton as tri

from op_testing import errors_vs_float64, max_scaled_error, nan_alloc

DEV = "cuda" if torch.cuda.is_available() else "cpu"
# measured max errors over W 2-4, L 1-40, every feature subset, 3 seeds (CPU interpreter): fp32 2.9e-7; bf16
# 7.4e-3 (y, dx), 3.5e-3 (dweight, dbias, dconv_state): one ulp (2^-7), as the interpreter rounds fp32 to bf16
# by truncation (a GPU rounds to nearest: half that); fp64 6e-16 (also below 1e-14 on an H200)
TOL = {torch.float32: 2e-6, torch.bfloat16: 1.6e-2, torch.float64: 1e-13}


err = max_scaled_error


@pytest.fixture(autouse=True)
def _nan_outputs(monkeypatch):
    """Kernel outputs start as NaN: an element a kernel forgets to write fails the comparison."""
    monkeypatch.setattr(tri, "_alloc", nan_alloc)


def naive_conv(x, weight, bias=None, state=None, seg=None):
    """float64 loop: y[b, t] = bias + sum_j weight[:, W-1-j] * in[b, t-j] over taps of t's segment."""
    b, L, c = x.shape
    w = weight.shape[1]
    y = torch.zeros(b, L, c, dtype=torch.float64)
    x, weight = x.double().cpu(), weight.double().cpu()
    for i in range(b):
        for t in range(L):
            acc = torch.zeros(c, dtype=torch.float64) if bias is None else bias.double().cpu().clone()
            for j in range(w):
                s = t - j
                if s >= 0:
                    v, sg = x[i, s], (0 if seg is None else int(seg[i, s]))
                elif state is not None:
                    v, sg = state[i, :, w + s].double().cpu(), 0
                else:
                    continue
                if seg is not None and sg != int(seg[i, t]):
                    continue
                acc += weight[:, w - 1 - j] * v
            y[i, t] = acc
    return y


def naive_window_after(x, state, w, seg=None):
    """float64 loop: the (B, C, W) window after the last token, inputs of earlier segments zeroed."""
    b, L, c = x.shape
    out = torch.zeros(b, c, w, dtype=torch.float64)
    for i in range(b):
        for k in range(w):
            t = L - w + k
            if t >= 0:
                v, sg = x[i, t].double().cpu(), (0 if seg is None else int(seg[i, t]))
            elif state is not None:
                v, sg = state[i, :, w + t].double().cpu(), 0
            else:
                continue
            if seg is None or sg == int(seg[i, -1]):
                out[i, :, k] = v
    return out


def make(b, L, c, w, dtype, bias=True, state=True, seg=True, strided=True, seed=0, reset0=True):
    """x as Mamba2 passes it (a slice of a wider (B, L, *) tensor), the window in allocate_inference_cache's
    transposed layout, seg from random resets (one at t=0 when reset0)."""
    gen = torch.Generator().manual_seed(seed)
    wide = torch.randn(b, L, c + 7, generator=gen)
    x = (wide[..., 3:3 + c] if strided else wide[..., :c].contiguous()).to(DEV, dtype)
    weight = (0.5 * torch.randn(c, w, generator=gen)).to(DEV, dtype)
    bias_t = (0.5 * torch.randn(c, generator=gen)).to(DEV, dtype) if bias else None
    st = torch.randn(b, w, c, generator=gen).to(DEV, dtype).transpose(1, 2) if state else None
    sg = None
    if seg:
        reset = torch.rand(b, L, generator=gen) < 0.3
        if reset0:
            reset[0, 0] = True
        sg = ref.segments_from_reset(reset).to(DEV)
    return x, weight, bias_t, st, sg


# ---- the reference against a float64 loop -------------------------------------------------------------------

@pytest.mark.parametrize("w", [1, 2, 4])
@pytest.mark.parametrize("L", [1, 3, 9])
def test_reference_vs_loop(w, L):
    x, weight, bias, st, sg = make(2, L, 5, w, torch.float64, seed=w * 10 + L)
    for kw in (dict(), dict(bias=bias), dict(bias=bias, state=st), dict(bias=bias, state=st, seg=sg),
               dict(seg=sg)):
        y = ref.causal_conv1d(x, weight, kw.get("bias"), kw.get("state"), kw.get("seg"))
        assert err(y, naive_conv(x, weight, **kw)) < 1e-14, kw
    for s, g in ((None, None), (st, None), (st, sg), (None, sg)):
        got = ref.conv_state_after(x, s, w, g)
        assert torch.allclose(got.cpu(), naive_window_after(x, s, w, g), rtol=0, atol=1e-15)


def test_reference_step_vs_sequence():
    """conv_step token by token == the sequence conv from the same window, and the windows agree."""
    x, weight, bias, st, _ = make(2, 6, 5, 4, torch.float64, seed=3)
    win = st.clone()
    outs = [ref.conv_step(x[:, t], win, weight, bias) for t in range(x.shape[1])]
    assert err(torch.stack(outs, 1), ref.causal_conv1d(x, weight, bias, st)) < 1e-14
    assert err(win, ref.conv_state_after(x, st, 4)) < 1e-15


# ---- Triton against the reference ---------------------------------------------------------------------------

def check_triton(x, weight, bias, st, sg, silu, tol, seed=0):
    """Forward and every gradient of the Triton op vs the reference evaluated in float64 on the same inputs."""
    def ref_conv(*ins):
        yr = ref.causal_conv1d(*ins, sg)
        return F.silu(yr) if silu else yr

    y, e = errors_vs_float64(lambda *ins: ops.causal_conv1d(*ins, sg, silu=silu, backend="triton"), ref_conv,
                             (x, weight, bias, st), ("dx", "dweight", "dbias", "dconv_state"), seed)
    assert y.dtype == x.dtype and y.shape == x.shape and y.is_contiguous()
    bad = {k: v for k, v in e.items() if not v <= tol}
    assert not bad, f"errors {e} over tolerance {tol}"
    return e


@pytest.mark.parametrize("w", [2, 3, 4])
@pytest.mark.parametrize("L", [1, 3, "w-1", 17])
def test_triton_all_features(w, L):
    """bias, initial window, seg with a reset at t=0, SiLU, strided x; L around the block edges."""
    L = max(1, w - 1) if L == "w-1" else L
    x, weight, bias, st, sg = make(2, L, 40, w, torch.float32, seed=w * 100 + L)
    check_triton(x, weight, bias, st, sg, True, TOL[torch.float32])


@pytest.mark.parametrize("drop", ["bias", "state", "seg", "silu", "all", "reset0", "contiguous"])
def test_triton_feature_subsets(drop):
    kw = dict(bias=drop not in ("bias", "all"), state=drop not in ("state", "all"), seg=drop not in ("seg", "all"),
              reset0=drop != "reset0", strided=drop != "contiguous")
    x, weight, bias, st, sg = make(2, 17, 20, 4, torch.float32, seed=7, **kw)
    check_triton(x, weight, bias, st, sg, drop not in ("silu", "all"), TOL[torch.float32])


@pytest.mark.parametrize("L,state", [(70, True), (64, False)])
def test_triton_several_row_programs(L, state):
    """Long enough for several backward programs along time (32 rows each when interpreted), each walking
    more than one tile: dweight / dbias partial sums over programs and batch rows."""
    x, weight, bias, st, sg = make(3, L, 36, 4, torch.float32, state=state, seed=L)
    check_triton(x, weight, bias, st, sg, True, TOL[torch.float32])


@pytest.mark.parametrize("case", ["all", "no_state_w3", "no_silu"])
def test_triton_bf16(case):
    w = 3 if case == "no_state_w3" else 4
    x, weight, bias, st, sg = make(2, 19, 40, w, torch.bfloat16, state=case != "no_state_w3", seed=11)
    check_triton(x, weight, bias, st, sg, case != "no_silu", TOL[torch.bfloat16])


@pytest.mark.parametrize("case", ["all_w4", "all_w2", "no_state", "no_seg", "no_bias", "several_programs", "bf16",
                                  "fp64"])
@pytest.mark.parametrize("mode", ["two-pass", "fused"])
def test_triton_silu_backward_modes(case, mode, monkeypatch):
    """The SiLU backward both ways (MAMBA_COMPAT_CONV_BWD_SILU): g = dy * silu'(a) written by the forward kernel
    then the plain backward, or a recomputed inside the backward kernel; each vs the float64 reference."""
    monkeypatch.setenv("MAMBA_COMPAT_CONV_BWD_SILU", mode)
    dt = {"bf16": torch.bfloat16, "fp64": torch.float64}.get(case, torch.float32)
    kw = dict(bias=case != "no_bias", state=case != "no_state", seg=case != "no_seg")
    b, L = (3, 70) if case == "several_programs" else (2, 17)
    x, weight, bias, st, sg = make(b, L, 36, 2 if case == "all_w2" else 4, dt, seed=len(case), **kw)
    check_triton(x, weight, bias, st, sg, True, TOL[dt])


def test_triton_silu_backward_mode_checked(monkeypatch):
    monkeypatch.setenv("MAMBA_COMPAT_CONV_BWD_SILU", "twopass")
    x, weight, bias, st, sg = make(1, 5, 8, 4, torch.float32, seed=1)
    with pytest.raises(ValueError, match="MAMBA_COMPAT_CONV_BWD_SILU must be 'two-pass' or 'fused', got 'twopass'"):
        check_triton(x, weight, bias, st, sg, True, TOL[torch.float32])


def test_triton_fp64():
    x, weight, bias, st, sg = make(1, 9, 20, 4, torch.float64, seed=5)
    check_triton(x, weight, bias, st, sg, True, TOL[torch.float64])


def test_triton_window_in_other_dtype():
    """An fp32 window with bf16 x (memrl keeps fp32 states): the window is rounded to x's dtype, like the
    reference; its gradient comes back in fp32."""
    x, weight, bias, st, sg = make(2, 5, 20, 4, torch.bfloat16, seed=9)
    st32 = torch.randn(st.shape, generator=torch.Generator().manual_seed(2)).to(DEV)
    s = st32.clone().requires_grad_(True)
    y = ops.causal_conv1d(x, weight, bias, s, sg, silu=True, backend="triton")
    yr = F.silu(ref.causal_conv1d(x.double(), weight.double(), bias.double(), st32.bfloat16().double(), sg))
    assert err(y, yr) <= TOL[torch.bfloat16]
    (g,) = torch.autograd.grad(y.float().sum(), s)
    sr = st32.bfloat16().double().requires_grad_(True)
    (gr,) = torch.autograd.grad(F.silu(ref.causal_conv1d(x.double(), weight.double(), bias.double(), sr, sg)).sum(),
                                sr)
    assert g.dtype == torch.float32 and err(g, gr) <= TOL[torch.bfloat16]


# ---- decode update -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("layout", ["transposed", "contiguous"])
@pytest.mark.parametrize("w,bias,silu", [(4, True, True), (2, False, True), (3, True, False), (1, True, True)])
def test_update_vs_conv_step(layout, w, bias, silu):
    b, c = 3, 40
    gen = torch.Generator().manual_seed(w)
    if layout == "transposed":  # allocate_inference_cache: (B, W, C) storage seen as (B, C, W)
        st = torch.randn(b, w, c, generator=gen).to(DEV).transpose(1, 2)
    else:
        st = torch.randn(b, c, w, generator=gen).to(DEV)
    x = torch.randn(b, c + 9, generator=gen).to(DEV)[:, 4:4 + c]  # a slice of in_proj's output
    weight = torch.randn(c, w, generator=gen).to(DEV)
    bias_t = torch.randn(c, generator=gen).to(DEV) if bias else None
    st_ref = st.clone()
    strides = st.stride()
    for _ in range(w + 1):  # past a full window turnover
        y = ops.causal_conv1d_update(x, st, weight, bias_t, silu=silu, backend="triton")
        yr = ref.conv_step(x, st_ref, weight, bias_t)
        yr = F.silu(yr) if silu else yr
        assert err(y, yr) <= TOL[torch.float32]
        assert torch.equal(st, st_ref)
        x = torch.randn(b, c, generator=gen).to(DEV)
    assert st.stride() == strides


def test_update_bf16_activations_fp32_window():
    b, c, w = 2, 24, 4
    gen = torch.Generator().manual_seed(1)
    st = torch.randn(b, w, c, generator=gen).to(DEV).transpose(1, 2)
    x = torch.randn(b, c, generator=gen).to(DEV, torch.bfloat16)
    weight = torch.randn(c, w, generator=gen).to(DEV, torch.bfloat16)
    bias = torch.randn(c, generator=gen).to(DEV, torch.bfloat16)
    st_ref = st.clone()
    y = ops.causal_conv1d_update(x, st, weight, bias, silu=True, backend="triton")
    yr = F.silu(ref.conv_step(x.double(), st_ref.double(), weight.double(), bias.double()))
    assert y.dtype == torch.bfloat16 and err(y, yr) <= TOL[torch.bfloat16]
    assert torch.equal(st[:, :, -1], x.float()) and torch.equal(st[:, :, :-1], st_ref[:, :, 1:])


# ---- registered ops ------------------------------------------------------------------------------------------

def test_opcheck_conv_ops():
    x, weight, bias, st, sg = make(1, 5, 8, 3, torch.float32, seed=4, strided=False)
    args = [t.requires_grad_(True) if t is not None and t.is_floating_point() else t for t in (x, weight, bias, st)]
    torch.library.opcheck(tri.conv1d_fwd_op, (*args, sg, True))
    torch.library.opcheck(tri.conv1d_fwd_op, (x.detach(), weight.detach(), None, None, None, False))
    upd = (torch.randn(2, 8, device=DEV), torch.randn(2, 3, 8, device=DEV).transpose(1, 2),
           torch.randn(8, 3, device=DEV), torch.randn(8, device=DEV), True)
    torch.library.opcheck(tri.conv1d_update_op, upd)


def test_compile_traces_the_op():
    """torch.compile(fullgraph=True) of the dispatching function: one opaque op, same values and gradients."""
    x, weight, bias, st, sg = make(1, 6, 8, 4, torch.float32, seed=6)
    xl = x.detach().clone().requires_grad_(True)

    def f(x):
        return ops.causal_conv1d(x, weight, bias, st, sg, silu=True, backend="triton")

    y = f(xl)
    yc = torch.compile(f, fullgraph=True, backend="inductor" if DEV == "cuda" else "aot_eager")(xl)
    assert err(yc, y) == 0
    (g,) = torch.autograd.grad(y.sum(), xl)
    (gc,) = torch.autograd.grad(yc.sum(), xl)
    assert err(gc, g) <= 1e-6


# ---- dispatch ------------------------------------------------------------------------------------------------

def test_dispatch_rules(monkeypatch):
    x, weight, bias, st, sg = make(1, 4, 8, 4, torch.float32, seed=8)
    want = F.silu(ref.causal_conv1d(x, weight, bias, st, sg))
    for name in ("reference", "naive"):
        assert torch.equal(ops.causal_conv1d(x, weight, bias, st, sg, silu=True, backend=name), want)
    assert ops.impl_name("naive", torch.device(DEV)) == "reference"
    if DEV == "cpu":
        assert ops.impl_name(None, x.device) == "reference"  # auto on CPU
        with pytest.raises(BackendUnavailable):
            ops.causal_conv1d(x, weight, backend="metal")  # metal runs on MPS tensors only
        monkeypatch.setenv("TRITON_INTERPRET", "0")
        with pytest.raises(BackendUnavailable):
            ops.causal_conv1d(x, weight, backend="triton")
        mamba_compat.set_backend("triton")
        with pytest.raises(BackendUnavailable):
            ops.causal_conv1d_update(x[:, 0], st.clone(), weight)
    else:
        assert ops.impl_name(None, x.device) == "triton"


def test_argument_errors():
    x, weight, bias, st, sg = make(1, 4, 8, 4, torch.float32, seed=8)
    with pytest.raises(ValueError, match="weight"):
        ops.causal_conv1d(x, weight[:4])
    with pytest.raises(ValueError, match="conv_state"):
        ops.causal_conv1d(x, weight, bias, st[..., :3])
    with pytest.raises(TypeError, match="seg"):
        ops.causal_conv1d(x, weight, bias, st, sg.float())
    with pytest.raises(ValueError, match="x must be"):
        ops.causal_conv1d_update(x, st, weight)


# ---- the Mamba2 layer on backend triton -----------------------------------------------------------------------

def _layer(seed=0, **kw):
    torch.manual_seed(seed)
    m = Mamba2(32, d_state=8, headdim=8, chunk_size=8, **kw).to(DEV)
    with torch.no_grad():
        m.D.add_(0.3 * torch.randn_like(m.D))
        m.norm.weight.add_(0.3 * torch.randn_like(m.norm.weight))
        m.conv1d.bias.add_(0.3 * torch.randn_like(m.conv1d.bias))
    return m


def _run_layer(m, backend, u, conv, ssm, reset):
    mamba_compat.set_backend(backend)
    try:
        m.zero_grad()
        u = u.clone().requires_grad_(True)
        conv = conv.clone().requires_grad_(True)
        out, conv_new, ssm_new = m.forward_with_state(u, conv, ssm, reset=reset)
        y = m(u)
        loss = out.square().sum() + conv_new.square().sum() + ssm_new.square().sum() + y.square().sum()
        loss.backward()
        grads = {n: p.grad.clone() for n, p in m.named_parameters()}
        grads.update(u=u.grad, conv_state=conv.grad)
        with torch.no_grad():  # one decode step (in place)
            cs, ss = m.allocate_inference_cache(u.shape[0], 1)
            cs.copy_(conv_new)
            ss.copy_(ssm_new)
            step_out = m.step(u[:, :1], cs, ss)[0]
        return dict(out=out, conv=conv_new, ssm=ssm_new, y=y, step=step_out, cs=cs, ss=ss), grads
    finally:
        mamba_compat.set_backend(None)


@pytest.mark.parametrize("kw", [dict(), dict(ngroups=2, norm_before_gate=True, d_conv=3)])
def test_mamba2_triton_equals_reference(kw, monkeypatch):
    """d_model 32, d_state 8, headdim 8, L 9: outputs, states, the decode step and every gradient (parameters,
    input, the given conv window) of the layer on backend triton equal the reference layer's (the scan's fp32
    dots in full precision on a GPU too)."""
    monkeypatch.setenv("MAMBA_COMPAT_TRITON_FP32", "ieee")
    m = _layer(**kw)
    b, L = 2, 9
    gen = torch.Generator().manual_seed(3)
    u = torch.randn(b, L, 32, generator=gen).to(DEV)
    conv = torch.randn(b, m.d_conv, m.conv_dim, generator=gen).to(DEV).transpose(1, 2)
    ssm = torch.randn(b, m.nheads, m.headdim, m.d_state, generator=gen).to(DEV)
    reset = torch.zeros(b, L, dtype=torch.bool, device=DEV)
    reset[1, 4] = True
    reset[0, 0] = True
    outs_r, grads_r = _run_layer(m, "reference", u, conv, ssm, reset)
    outs_t, grads_t = _run_layer(m, "triton", u, conv, ssm, reset)
    for k in outs_r:
        assert err(outs_t[k], outs_r[k]) <= 2e-5, k
    for k in grads_r:
        assert err(grads_t[k], grads_r[k]) <= 5e-5, k
