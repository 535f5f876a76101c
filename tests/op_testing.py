"""Shared test helpers: random problems for the ops and a relative-RMSE comparison."""
from __future__ import annotations

import json
import os

import torch

RECORD = os.environ.get("MAMBA_COMPAT_RECORD_ERRORS")
"""A file path: every assert_close appends its measured error there as one JSON line (test, name, rel, bound), so
tolerances can be set from measured error per dtype and device (bench/tolerances.py summarises the file)."""


def assert_close(name: str, ref: torch.Tensor, out: torch.Tensor, ratio: float, atol_floor: float = 1e-12):
    """Relative RMSE of out vs ref (both upcast to float64) must be <= ratio; NaNs always fail."""
    assert out.shape == ref.shape, f"{name}: shape {tuple(out.shape)} != {tuple(ref.shape)}"
    out64, ref64 = out.detach().double(), ref.detach().double()
    assert not torch.isnan(out64).any(), f"{name}: output has NaN"
    err = (out64 - ref64).pow(2).mean().sqrt().item()
    base = ref64.pow(2).mean().sqrt().item()
    rel = err / max(base, atol_floor)
    maxdiff = (out64 - ref64).abs().max().item() if out64.numel() else 0.0
    if RECORD:
        with open(RECORD, "a") as f:
            f.write(json.dumps(dict(test=os.environ.get("PYTEST_CURRENT_TEST", "?").split(" ")[0], name=name, rel=rel,
                                    bound=ratio, dtype=str(out.dtype), device=str(out.device))) + "\n")
    assert rel <= ratio, f"{name}: relative RMSE {rel:.3e} > {ratio:.1e} (max abs diff {maxdiff:.3e}, ref rms {base:.3e})"


def max_scaled_error(a: torch.Tensor, r: torch.Tensor) -> float:
    """max |a - r| / max |r| (both upcast to float64 on the CPU); inf if a has a non-finite element."""
    a, r = a.detach().double().cpu(), r.detach().double().cpu()
    if not torch.isfinite(a).all():
        return float("inf")
    return ((a - r).abs().max() / r.abs().max().clamp_min(1e-30)).item()


def nan_alloc(shape, dtype, device):
    """torch.empty filled with NaN (floating dtypes): a stand-in for a launcher's allocator in tests, so that an
    element a kernel forgets to write fails the comparison."""
    t = torch.empty(shape, dtype=dtype, device=device)
    return t.fill_(float("nan")) if dtype.is_floating_point else t


def errors_vs_float64(run, run_ref, inputs, names, seed=0):
    """Forward and every gradient of `run(*leaves)` against `run_ref(*float64 leaves)` on the same inputs (None
    entries stay None; `names` names the gradient of each input), with one random upstream gradient:
    -> (y, {"y": err, "d<name>": err, ...}) as max_scaled_error. Gradient dtypes must be their input's."""
    leaves = [t.detach().clone().requires_grad_(True) if t is not None else None for t in inputs]
    ref_leaves = [t.detach().double().requires_grad_(True) if t is not None else None for t in inputs]
    y, y_ref = run(*leaves), run_ref(*ref_leaves)
    errors = {"y": max_scaled_error(y, y_ref)}
    gen = torch.Generator().manual_seed(seed + 1)
    dy = torch.randn(y.shape, generator=gen).to(y.device, y.dtype)
    want = [i for i, t in enumerate(leaves) if t is not None]
    grads = torch.autograd.grad(y, [leaves[i] for i in want], dy)
    grads_ref = torch.autograd.grad(y_ref, [ref_leaves[i] for i in want], dy.double())
    for i, a, r in zip(want, grads, grads_ref):
        assert a.dtype == leaves[i].dtype, names[i]
        errors[names[i]] = max_scaled_error(a, r)
    return y, errors


def make_problem(b=2, l=15, h=4, p=8, g=2, n=16, dtype=torch.float64, *, D="h", z=True, dt_bias=True,
                 init=True, seq_idx=None, device="cpu", seed=0, requires_grad=False, dt_scale=1.0):
    """Random SSD inputs as a dict of mamba_chunk_scan_combined keyword arguments (chunk_size not included)."""
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape, dt_=None, scale=1.0):
        t = torch.randn(*shape, generator=gen, dtype=torch.float64) * scale
        return t.to(dt_ or dtype).to(device)

    kw = dict(
        x=rnd(b, l, h, p),
        dt=rnd(b, l, h, dt_=torch.float32 if dtype != torch.float64 else torch.float64, scale=dt_scale),
        A=-(torch.rand(h, generator=gen, dtype=torch.float64) * 3 + 0.2).to(torch.float32 if dtype != torch.float64 else dtype).to(device),
        B=rnd(b, l, g, n),
        C=rnd(b, l, g, n),
    )
    pdt = torch.float32 if dtype != torch.float64 else torch.float64
    if D == "h":
        kw["D"] = rnd(h, dt_=pdt)
    elif D == "hp":
        kw["D"] = rnd(h, p, dt_=pdt)
    if z:
        kw["z"] = rnd(b, l, h, p)
    if dt_bias:
        kw["dt_bias"] = rnd(h, dt_=pdt, scale=0.5)
    if init:
        kw["initial_states"] = rnd(b, h, p, n, dt_=pdt)
    if seq_idx is not None:
        kw["seq_idx"] = seq_idx.to(device)
    if requires_grad:
        for k, v in kw.items():
            if v.is_floating_point():
                v.requires_grad_(True)
    return kw


def random_seq_idx(b, l, n_resets, seed=0):
    """(b, l) int32 segment ids with about n_resets changes per row."""
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(b):
        cuts = torch.zeros(l, dtype=torch.int32)
        if l > 1 and n_resets:
            pos = torch.randint(1, l, (n_resets,), generator=gen)
            cuts[pos] = 1
        rows.append(cuts.cumsum(0).to(torch.int32))
    return torch.stack(rows)


SCAN_INPUTS = ("x", "dt", "A", "B", "C", "D", "z", "dt_bias", "initial_states")
"""The differentiable inputs of an SSD backend's registered forward op, in its argument order."""


def gradcheck_scan(scan) -> None:
    """float64 gradcheck of scan(x, dt, A, B, C, chunk, D, z, dt_bias, init, seq_idx, softplus, dt_min, dt_max)
    (a backend's registered op or its eager function) on a small problem with two resets."""
    import math
    kw = make_problem(b=1, l=9, h=2, p=2, g=1, n=3, D="h", requires_grad=True)
    seq = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 2, 2]])

    def f(x, dt, A, B, C, D, z, dt_bias, init):
        return scan(x, dt, A, B, C, 4, D, z, dt_bias, init, seq, True, 0.0, math.inf)

    assert torch.autograd.gradcheck(f, tuple(kw[k] for k in SCAN_INPUTS))


def opcheck_scan(fwd_op) -> None:
    """torch.library.opcheck of a backend's registered forward op (fake tensor, autograd registration, schema)."""
    import math
    kw = make_problem(b=1, l=10, h=2, p=2, g=1, n=3, D="hp", dtype=torch.float32, requires_grad=True)
    args = (kw["x"], kw["dt"], kw["A"], kw["B"], kw["C"], 4, kw["D"], kw["z"], kw["dt_bias"], kw["initial_states"],
            None, True, 0.0, math.inf)
    torch.library.opcheck(fwd_op, args)


def compiled_scan_matches_eager(backend: str) -> None:
    """mamba_chunk_scan_combined(backend=...) under torch.compile(fullgraph=True): loss and every gradient equal
    the eager call's."""
    from mamba_compat import mamba_chunk_scan_combined
    kw = make_problem(b=1, l=24, h=2, p=4, g=1, n=4, dtype=torch.float32, requires_grad=True)

    def f(x, dt, A, B, C, D, z, dt_bias, initial_states):
        y, s = mamba_chunk_scan_combined(x, dt, A, B, C, 8, D=D, z=z, dt_bias=dt_bias, initial_states=initial_states,
                                         dt_softplus=True, return_final_states=True, backend=backend)
        return y.square().sum() + s.sum()

    args = [kw[k] for k in SCAN_INPUTS]
    loss = torch.compile(f, fullgraph=True, backend="aot_eager")(*args)
    grads = torch.autograd.grad(loss, args)
    loss_ref = f(*args)
    grads_ref = torch.autograd.grad(loss_ref, args)
    assert_close("loss", loss_ref, loss, 1e-6)
    for name, g0, g1 in zip(SCAN_INPUTS, grads_ref, grads):
        assert_close(f"d{name}", g0, g1, 1e-5)
