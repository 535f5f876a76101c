"""The triton backend (SSD forward/backward and the decode step) against the oracles.

Without a GPU the kernels run under the Triton interpreter (TRITON_INTERPRET=1, set here and in
conftest.py before mamba_compat is imported) on tiny shapes: L <= 40, chunk 16, P, N <= 16, since the
interpreter costs milliseconds per program per chunk. With CUDA the same tests run compiled, plus
the CUDA-only ones at the end (long sequences, bf16 at real sizes, torch.compile with inductor).
"""
import math
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from mamba_compat import mamba_chunk_scan_combined, selective_state_update  # noqa: E402
from mamba_compat.ops.ssd import naive  # noqa: E402
from mamba_compat.ops.ssd import triton as tssd  # noqa: E402
from mamba_compat.ops.state_update import reference as su_ref  # noqa: E402

from op_testing import assert_close, make_problem, random_seq_idx  # noqa: E402

CUDA = torch.cuda.is_available()
DEV = "cuda" if CUDA else "cpu"
# Bounds on the relative RMSE vs the oracle, per dtype, outputs (TOL) and gradients (GRAD_TOL), set a few times
# above the worst error measured (MAMBA_COMPAT_RECORD_ERRORS + bench/tolerances.py) under the interpreter on the
# CPU, 2026-12-02; not yet compiled on a GPU with these bounds (the errors reported there before, ~1e-7 in fp32 with
# fp32 dots and 1e-3 to 4e-3 in bf16 on an H200, sit inside them). fp32 tests run with exact fp32 dots (the
# interpreter always does; on CUDA the autouse fixture below forces MAMBA_COMPAT_TRITON_FP32=ieee); the default
# tf32 / tf32x3 mode is checked on its own in test_default_tf32_mode with TF32_TOL.
TOL = {torch.float32: 1e-6, torch.bfloat16: 1.5e-2, torch.float16: 1e-3}
GRAD_TOL = {torch.float32: 5e-6, torch.bfloat16: 2e-2, torch.float16: 1.5e-3}
TF32_TOL = {"y": 3e-3, "final_states": 3e-3, "grad": 5e-5}


@pytest.fixture(autouse=True)
def exact_fp32_dots(monkeypatch):
    monkeypatch.setenv("MAMBA_COMPAT_TRITON_FP32", "ieee")
GRAD_NAMES = ("x", "dt", "A", "B", "C", "D", "z", "dt_bias", "initial_states")


def _run(fn, kw, chunk, **opts):
    return fn(kw["x"], kw["dt"], kw["A"], kw["B"], kw["C"], chunk, kw.get("D"), kw.get("z"), kw.get("dt_bias"),
              kw.get("initial_states"), kw.get("seq_idx"), opts.get("dt_softplus", True), opts.get("dt_min", 0.0),
              opts.get("dt_max", math.inf))


def _oracle_inputs(kw):
    """float64 copies of the floating inputs (leaves), seq_idx shared."""
    return {k: (v.detach().double().requires_grad_(v.requires_grad) if v.is_floating_point() else v)
            for k, v in kw.items()}


# name: (make_problem kwargs, chunk, options)
CASES = {
    "full": (dict(b=2, l=37, h=4, p=16, g=2, n=16, D="hp", seq_idx=torch.tensor([[0] * 10 + [1] * 20 + [0] * 7,
                                                                                  [3] * 37])),
             16, dict(dt_softplus=True, dt_min=0.01, dt_max=1.5)),
    "bare_L1_oddPN": (dict(b=1, l=1, h=2, p=12, g=1, n=8, D=None, z=False, dt_bias=False, init=False), 64,
                      dict(dt_softplus=False)),
    "Dh_ragged_chunk32": (dict(b=1, l=40, h=2, p=16, g=1, n=16, D="h", z=False, init=False,
                               seq_idx=random_seq_idx(1, 40, 3, seed=2)), 32, dict(dt_softplus=True)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_forward_and_grads_vs_naive(case):
    """y, final_states and the gradient of every input (random upstream grads on y and final)."""
    pk, chunk, opts = CASES[case]
    kw = make_problem(dtype=torch.float32, device=DEV, requires_grad=True, seed=3, **pk)
    y, fin = _run(tssd.chunk_scan, kw, chunk, **opts)
    ref = _oracle_inputs(kw)
    y_r, fin_r = _run(naive.ssd_naive, ref, chunk, **opts)
    assert_close("y", y_r, y, TOL[torch.float32])
    assert_close("final_states", fin_r, fin, TOL[torch.float32])
    gen = torch.Generator().manual_seed(7)
    gy = torch.randn(y.shape, generator=gen, dtype=torch.float64)
    gf = torch.randn(fin.shape, generator=gen, dtype=torch.float64)
    names = [k for k in GRAD_NAMES if k in kw]
    g = torch.autograd.grad((y.double() * gy.to(DEV)).sum() + (fin.double() * gf.to(DEV)).sum(),
                            [kw[k] for k in names])
    g_r = torch.autograd.grad((y_r * gy.to(DEV)).sum() + (fin_r * gf.to(DEV)).sum(), [ref[k] for k in names])
    for name, a, r in zip(names, g, g_r):
        assert_close(f"d{name}", r, a, GRAD_TOL[torch.float32], atol_floor=1e-2)


def test_default_tf32_mode(monkeypatch):
    """The default fp32 mode on CUDA (tf32 dots forward, tf32x3 backward) on the 'full' case, with its own bounds;
    under the interpreter the default is exact, so the same bounds hold with room."""
    monkeypatch.delenv("MAMBA_COMPAT_TRITON_FP32")
    pk, chunk, opts = CASES["full"]
    kw = make_problem(dtype=torch.float32, device=DEV, requires_grad=True, seed=13, **pk)
    y, fin = _run(tssd.chunk_scan, kw, chunk, **opts)
    ref = _oracle_inputs(kw)
    y_r, fin_r = _run(naive.ssd_naive, ref, chunk, **opts)
    assert_close("y", y_r, y, TF32_TOL["y"])
    assert_close("final_states", fin_r, fin, TF32_TOL["final_states"])
    names = [k for k in GRAD_NAMES if k in kw]
    g = torch.autograd.grad(y.sum() + fin.sum(), [kw[k] for k in names])
    g_r = torch.autograd.grad(y_r.sum() + fin_r.sum(), [ref[k] for k in names])
    for name, a, r in zip(names, g, g_r):
        assert_close(f"d{name}", r, a, TF32_TOL["grad"], atol_floor=1e-2)


def _split_problem():
    """seq_idx changes across group borders, initial states, z, D per (head, p), a ragged last chunk (87 = 5*16 + 7)."""
    return make_problem(b=2, l=87, h=2, p=16, g=1, n=16, D="hp", z=True, dtype=torch.float32, device=DEV,
                        requires_grad=True, seed=5, init=True,
                        seq_idx=torch.tensor([[0] * 32 + [1] * 38 + [2] * 17, [4] * 87]))


@pytest.mark.parametrize("k", [1, 2, 3])
def test_split_forward_equals_sequential_and_oracle(k, monkeypatch):
    """The chunk-parallel forward (groups of k chunks from zero, the scan over groups, y per group), forced: y and
    final states equal the sequential forward and the oracle."""
    kw = _split_problem()
    opts = dict(dt_softplus=True)
    monkeypatch.setenv("MAMBA_COMPAT_TRITON_FWD_SPLIT", "0")
    y1, fin1 = _run(tssd.chunk_scan, kw, 16, **opts)
    monkeypatch.setenv("MAMBA_COMPAT_TRITON_FWD_SPLIT", str(k))
    assert tssd.group_split(2, 2, 16, 6, torch.device(DEV)) == (k if k < 6 else 0)
    y, fin = _run(tssd.chunk_scan, kw, 16, **opts)
    ref = _oracle_inputs(kw)
    y_r, fin_r = _run(naive.ssd_naive, ref, 16, **opts)
    assert_close("y", y_r, y, TOL[torch.float32])
    assert_close("final_states", fin_r, fin, TOL[torch.float32])
    assert_close("y vs sequential", y1.double(), y, 1e-6)
    assert_close("final vs sequential", fin1.double(), fin, 1e-6)


@pytest.mark.parametrize("k", [1, 2, 4])
def test_split_backward_equals_sequential_and_oracle(k, monkeypatch):
    """The chunk-parallel backward state passes (forward states and reverse state gradients in groups of k
    chunks, each with its scan over groups), forced: every gradient, the initial states' included and with a
    gradient arriving on final_states, equals the sequential passes' and the oracle's."""
    kw = _split_problem()
    opts = dict(dt_softplus=True)
    names = [n for n in GRAD_NAMES if n in kw]
    torch.manual_seed(0)
    gy = torch.randn(2, 87, 2, 16, dtype=torch.float64).to(DEV)
    gf = torch.randn(2, 2, 16, 16, dtype=torch.float64).to(DEV)

    def grads(fn, inputs):
        y, fin = _run(fn, inputs, 16, **opts)
        loss = (y.double() * gy.to(y.device)).sum() + (fin.double() * gf.to(y.device)).sum()
        return torch.autograd.grad(loss, [inputs[n] for n in names])

    monkeypatch.setenv("MAMBA_COMPAT_TRITON_BWD_SPLIT", "0")
    g_seq = grads(tssd.chunk_scan, kw)
    monkeypatch.setenv("MAMBA_COMPAT_TRITON_BWD_SPLIT", str(k))
    g_split = grads(tssd.chunk_scan, kw)
    g_ref = grads(naive.ssd_naive, _oracle_inputs(kw))
    for name, a, sq, r in zip(names, g_split, g_seq, g_ref):
        assert_close(f"d{name}", r, a, GRAD_TOL[torch.float32], atol_floor=1e-2)
        assert_close(f"d{name} vs sequential", sq.double(), a, 1e-6, atol_floor=1e-6)


def test_split_heuristic():
    """Split only for long sequences with few programs per SM (and never off CUDA unless forced)."""
    for backward in (False, True):
        assert tssd.group_split(8, 32, 64, 32, torch.device("cpu"), backward) == 0
        if CUDA:
            dev = torch.device("cuda")
            sms = torch.cuda.get_device_properties(dev).multi_processor_count
            assert tssd.group_split(64, 32, 64, 32, dev, backward) == 0  # many (b, h): sequential
            assert tssd.group_split(1, 4, 64, 4, dev, backward) == 0  # few chunks: sequential
            k = tssd.group_split(1, 8, 64, 64, dev, backward)
            assert 0 < k < 64 and 8 * 2 * (-(-64 // k)) <= 8 * sms


def test_gradient_from_final_states_only():
    """The loss sees only final_states: the gradient must still reach every input through the recurrence."""
    kw = make_problem(b=1, l=33, h=2, p=16, g=1, n=16, D="h", z=True, dtype=torch.float32, device=DEV,
                      requires_grad=True, seed=4)
    _, fin = _run(tssd.chunk_scan, kw, 16)
    ref = _oracle_inputs(kw)
    _, fin_r = _run(naive.ssd_naive, ref, 16)
    names = ["x", "dt", "A", "B", "dt_bias", "initial_states"]  # C and z do not reach final_states
    g = torch.autograd.grad(fin.sum(), [kw[k] for k in names])
    g_r = torch.autograd.grad(fin_r.sum(), [ref[k] for k in names])
    for name, a, r in zip(names, g, g_r):
        assert_close(f"d{name}", r, a, GRAD_TOL[torch.float32], atol_floor=1e-2)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs(dtype):
    """16-bit x/B/C/z with fp32 accumulation: y in the input dtype, final states fp32, gradients (16-bit
    chunk states and, for bf16 with several heads per group, bf16 per-head dB/dC partials)."""
    kw = make_problem(b=1, l=20, h=4, p=16, g=2, n=16, D="h", dtype=dtype, device=DEV, seed=5, requires_grad=True)
    y, fin = _run(tssd.chunk_scan, kw, 16)
    assert y.dtype == dtype and fin.dtype == torch.float32
    ref = _oracle_inputs(kw)
    y_r, fin_r = _run(naive.ssd_naive, ref, 16)
    assert_close("y", y_r, y, TOL[dtype])
    assert_close("final_states", fin_r, fin, TOL[dtype])
    names = [k for k in GRAD_NAMES if k in kw]
    g = torch.autograd.grad(y.float().sum() + fin.sum(), [kw[k] for k in names])
    g_r = torch.autograd.grad(y_r.sum() + fin_r.sum(), [ref[k] for k in names])
    for name, a, r in zip(names, g, g_r):
        assert a.dtype == kw[name].dtype
        assert_close(f"d{name}", r, a, GRAD_TOL[dtype], atol_floor=1e-2)


@pytest.mark.parametrize("dt_scale, a_scale, check_grads", [(10.0, 10.0, True), (30.0, 100.0, False)])
def test_large_dt_times_A_is_stable(dt_scale, a_scale, check_grads):
    """|dt*A| per step up to ~1e3 (and ~1e5): decays underflow to 0, never inf/NaN. The forward matches the
    float64 oracle (segment sums are differenced in fp64); gradients are checked where the chunked
    gradient of A, a difference of terms that grow with dt, keeps fp32 precision (|dt*A| ~ 1e3)."""
    kw = make_problem(b=1, l=24, h=2, p=16, g=1, n=16, D="h", z=False, dtype=torch.float32, device=DEV,
                      requires_grad=True, seed=6, dt_scale=dt_scale)
    kw["A"].data.mul_(a_scale)
    y, fin = _run(tssd.chunk_scan, kw, 16, dt_softplus=True)
    ref = _oracle_inputs(kw)
    y_r, fin_r = _run(naive.ssd_naive, ref, 16, dt_softplus=True)
    # measured (interpreter): y 8.5e-6, final 9.3e-7, dA 9.0e-5, other gradients <= 4e-6: fp32 rounding of terms
    # as large as |dt*A| ~ 1e3, not of O(1) terms, hence bounds of their own
    assert_close("y", y_r, y, 3e-5)
    assert_close("final_states", fin_r, fin, 3e-5)
    names = ["x", "dt", "A", "B", "C", "initial_states"]
    g = torch.autograd.grad(y.sum() + fin.sum(), [kw[k] for k in names])
    g_r = torch.autograd.grad(y_r.sum() + fin_r.sum(), [ref[k] for k in names])
    for name, a, r in zip(names, g, g_r):
        assert torch.isfinite(a).all(), name
        if check_grads:
            assert_close(f"d{name}", r, a, 3e-4, atol_floor=1e-2)


def test_public_op_dispatches_to_triton_and_compiles():
    """mamba_chunk_scan_combined(backend='triton') equals the direct call and traces with fullgraph=True."""
    kw = make_problem(b=1, l=16, h=2, p=16, g=1, n=16, D="h", z=False, init=False, dtype=torch.float32,
                      device=DEV, seed=8)
    args = (kw["x"], kw["dt"], kw["A"], kw["B"], kw["C"], 16)

    def f(x, dt, A, B, C, chunk):
        return mamba_chunk_scan_combined(x, dt, A, B, C, chunk, D=kw["D"], dt_bias=kw["dt_bias"], dt_softplus=True,
                                         return_final_states=True, backend="triton")

    y, fin = f(*args)
    y_d, fin_d = _run(tssd.chunk_scan, kw, 16)
    assert torch.equal(y, y_d) and torch.equal(fin, fin_d)
    compiled = torch.compile(f, fullgraph=True, backend="inductor" if CUDA else "aot_eager")
    y_c, fin_c = compiled(*args)
    assert_close("y (compiled)", y_d, y_c, 1e-6)
    assert_close("final (compiled)", fin_d, fin_c, 1e-6)


def test_strided_inputs_as_mamba2_passes_them():
    """x, B, C are views into one packed (b, l, channels) tensor and dt a slice of another, as Mamba2's
    split of xBC produces: the kernels read them through their strides; gradients reach the packed leaf."""
    b, l, h, p, g, n = 1, 20, 2, 16, 1, 16
    gen = torch.Generator().manual_seed(11)
    c = h * p + 2 * g * n + 3  # 3 spare channels: odd strides

    def views(xbc, dtf):
        x = xbc[..., :h * p].unflatten(-1, (h, p))  # (b, l, h, p) view
        B = xbc[..., h * p:h * p + g * n].unflatten(-1, (g, n))  # (b, l, g, n) view
        C = xbc[..., h * p + g * n:h * p + 2 * g * n].unflatten(-1, (g, n))
        return dict(x=x, dt=dtf[..., 2:2 + h], B=B, C=C)

    xbc = torch.randn(b, l, c, generator=gen).to(DEV).requires_grad_(True)
    dtf = torch.randn(b, l, h + 5, generator=gen).to(DEV).requires_grad_(True)
    A = (-torch.rand(h, generator=gen) - 0.5).to(DEV)
    D = torch.randn(h, generator=gen).to(DEV)
    kw = dict(views(xbc, dtf), A=A, D=D)
    assert not kw["x"].is_contiguous() and not kw["dt"].is_contiguous()
    y, fin = _run(tssd.chunk_scan, kw, 16)
    xbc_r, dtf_r = (t.detach().double().requires_grad_(True) for t in (xbc, dtf))
    y_r, fin_r = _run(naive.ssd_naive, dict(views(xbc_r, dtf_r), A=A.double(), D=D.double()), 16)
    assert_close("y", y_r, y, TOL[torch.float32])
    assert_close("final_states", fin_r, fin, TOL[torch.float32])
    g = torch.autograd.grad(y.sum() + fin.sum(), [xbc, dtf])
    g_r = torch.autograd.grad(y_r.sum() + fin_r.sum(), [xbc_r, dtf_r])
    for name, a, r in zip(("d xBC", "d dt"), g, g_r):
        assert_close(name, r, a, GRAD_TOL[torch.float32], atol_floor=1e-2)


def test_opcheck_of_registered_ops():
    """torch.library.opcheck: schema, fake (meta) kernel, autograd registration and AOT dispatch."""
    kw = make_problem(b=1, l=8, h=2, p=16, g=1, n=16, D="h", z=False, init=True, dtype=torch.float32,
                      device=DEV, seed=12, requires_grad=True)
    args = (kw["x"], kw["dt"], kw["A"], kw["B"], kw["C"], 16, kw["D"], None, kw["dt_bias"], kw["initial_states"],
            None, True, 0.0, math.inf)
    torch.library.opcheck(tssd._fwd_op, args, test_utils=("test_schema", "test_faketensor",
                                                           "test_autograd_registration"))


# ---- decode step -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("layout", ["4d_idx_pad", "3d", "4d_bf16_state_per_elem"])
def test_decode_step_vs_reference(layout):
    """selective_state_update(backend='triton') vs the PyTorch step: output and the in-place state."""
    torch.manual_seed(0)
    b, h, p, n, g = 3, 4, 12, 16, 2
    sdtype = torch.bfloat16 if "bf16" in layout else torch.float32
    rows = 6 if "idx" in layout else b
    state = torch.randn(rows, h, p, n, device=DEV).to(sdtype)
    x = torch.randn(b, h, p, device=DEV)
    z = torch.randn(b, h, p, device=DEV)
    if "per_elem" in layout:
        dt, A = torch.randn(b, h, p, device=DEV), -torch.rand(h, p, n, device=DEV)
        dtb, D = torch.randn(h, p, device=DEV) * 0.5, torch.randn(h, p, device=DEV)
    else:
        dt = torch.randn(b, h, device=DEV)[..., None].expand(b, h, p)
        A = (-torch.rand(h, device=DEV))[:, None, None].expand(h, p, n)
        dtb = (torch.randn(h, device=DEV) * 0.5)[:, None].expand(h, p)
        D = torch.randn(h, device=DEV)[:, None].expand(h, p)
    Bm, Cm = torch.randn(b, g, n, device=DEV), torch.randn(b, g, n, device=DEV)
    idx = torch.tensor([4, -1, 1], device=DEV, dtype=torch.int32) if "idx" in layout else None
    if layout == "3d":  # (batch, dim, dstate) without heads: one head, one group
        st3 = state[:, 0].contiguous()
        args = (x[:, 0], dt[:, 0], A[0], Bm[:, 0], Cm[:, 0])
        kw = dict(D=D[0], z=z[:, 0], dt_bias=dtb[0], dt_softplus=True)
        s_r, s_t = st3.clone(), st3.clone()
        o_r = selective_state_update(s_r, *args, **kw, backend="reference")
        o_t = selective_state_update(s_t, *args, **kw, backend="triton")
    else:
        kw = dict(D=D, z=z, dt_bias=dtb, dt_softplus=True, state_batch_indices=idx)
        s_r, s_t = state.clone(), state.clone()
        o_r = selective_state_update(s_r, x, dt, A, Bm, Cm, **kw, backend="reference")
        o_t = selective_state_update(s_t, x, dt, A, Bm, Cm, **kw, backend="triton")
    tol = 1e-6 if sdtype == torch.float32 else 1e-2  # measured: 1.5e-7 (fp32 state), 4.2e-3 (bf16 state rounding)
    assert_close("out", o_r, o_t, tol)
    assert_close("state", s_r.float(), s_t.float(), tol)
    if idx is not None:
        assert torch.equal(s_t[[0, 2, 3, 5]], state[[0, 2, 3, 5]])  # untouched rows, pad slot skipped
        assert (o_t[1] == 0).all()


def test_decode_step_compiles_fullgraph():
    """selective_state_update(backend='triton') inside torch.compile(fullgraph=True): the registered op (it mutates
    the state) is traced without a graph break and updates the state exactly as the eager call."""
    torch.manual_seed(1)
    b, h, p, n = 2, 2, 16, 16
    state = torch.randn(b, h, p, n, device=DEV)
    x, z = torch.randn(b, h, p, device=DEV), torch.randn(b, h, p, device=DEV)
    dt = torch.randn(b, h, device=DEV)[..., None].expand(b, h, p)
    A = (-torch.rand(h, device=DEV))[:, None, None].expand(h, p, n)
    Bm, Cm = torch.randn(b, 1, n, device=DEV), torch.randn(b, 1, n, device=DEV)

    def f(s, x, z):
        return selective_state_update(s, x, dt, A, Bm, Cm, z=z, dt_softplus=True, backend="triton")

    s_e, s_c = state.clone(), state.clone()
    o_e = f(s_e, x, z)
    o_c = torch.compile(f, fullgraph=True, backend="inductor" if CUDA else "aot_eager")(s_c, x, z)
    assert_close("out (compiled)", o_e, o_c, 1e-6)
    assert_close("state (compiled)", s_e, s_c, 1e-6)
    assert not torch.equal(s_c, state)


# ---- CUDA only ---------------------------------------------------------------------------------------------------

needs_cuda = pytest.mark.skipif(not CUDA, reason="compiled Triton needs a CUDA device")


@needs_cuda
@pytest.mark.parametrize("L", [16384, 65536])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_long_sequences_stable(L, dtype):
    """L = 16k and 64k with resets: finite and close to the reference (fwd + grads of x, dt, A)."""
    from mamba_compat.ops.ssd import reference

    kw = make_problem(b=1, l=L, h=4, p=64, g=1, n=64, D="h", z=True, dtype=dtype, device=DEV, seed=9,
                      seq_idx=random_seq_idx(1, L, 8, seed=1), requires_grad=True)
    y, fin = _run(tssd.chunk_scan, kw, 256)
    ref = {k: (v.detach().float().requires_grad_(True) if v.is_floating_point() else v) for k, v in kw.items()}
    y_r, fin_r = _run(reference.chunk_scan, ref, 256)
    # two implementations over up to 64k steps vs each other, not vs the float64 oracle: bounds of their own (not yet
    # measured on a GPU with exact fp32 dots; MAMBA_COMPAT_RECORD_ERRORS records them there)
    tol, grad_tol = {torch.float32: (1e-5, 5e-5), torch.bfloat16: (3e-2, 4e-2)}[dtype]
    assert_close("y", y_r, y, tol)
    assert_close("final_states", fin_r, fin, tol)
    names = ["x", "dt", "A", "B"]
    g = torch.autograd.grad(y.float().sum() + fin.sum(), [kw[k] for k in names])
    g_r = torch.autograd.grad(y_r.sum() + fin_r.sum(), [ref[k] for k in names])
    for name, a, r in zip(names, g, g_r):
        assert_close(f"d{name}", r, a, grad_tol)


@needs_cuda
def test_lm_shape_bf16_all_grads():
    """A bf16 problem at real head sizes (P64 N128, groups) with every option, vs the fp32 reference."""
    from mamba_compat.ops.ssd import reference

    kw = make_problem(b=2, l=700, h=8, p=64, g=2, n=128, D="hp", dtype=torch.bfloat16, device=DEV, seed=10,
                      seq_idx=random_seq_idx(2, 700, 4, seed=3), requires_grad=True)
    y, fin = _run(tssd.chunk_scan, kw, 256, dt_min=0.001, dt_max=2.0)
    ref = {k: (v.detach().float().requires_grad_(True) if v.is_floating_point() else v) for k, v in kw.items()}
    y_r, fin_r = _run(reference.chunk_scan, ref, 256, dt_min=0.001, dt_max=2.0)
    assert_close("y", y_r, y, TOL[torch.bfloat16])
    names = [k for k in GRAD_NAMES if k in kw]
    gy = torch.randn_like(y_r)
    g = torch.autograd.grad((y.float() * gy).sum() + fin.sum(), [kw[k] for k in names])
    g_r = torch.autograd.grad((y_r * gy).sum() + fin_r.sum(), [ref[k] for k in names])
    for name, a, r in zip(names, g, g_r):
        assert_close(f"d{name}", r, a, GRAD_TOL[torch.bfloat16])


@needs_cuda
def test_decode_matches_reference_large_batch():
    b, h, p, n = 512, 4, 64, 64
    state = torch.randn(b, h, p, n, device=DEV)
    x, dt = torch.randn(b, h, p, device=DEV), torch.randn(b, h, device=DEV)[..., None].expand(b, h, p)
    A = (-torch.rand(h, device=DEV))[:, None, None].expand(h, p, n)
    Bm, Cm = torch.randn(b, 1, n, device=DEV), torch.randn(b, 1, n, device=DEV)
    s_r, s_t = state.clone(), state.clone()
    o_r = su_ref.state_update(s_r, x, dt, A, Bm, Cm, None, None, None, True, None)
    o_t = selective_state_update(s_t, x, dt, A, Bm, Cm, dt_softplus=True, backend="triton")
    assert_close("out", o_r, o_t, 1e-5)
    assert_close("state", s_r, s_t, 1e-5)
