"""SSD forward and forward+backward per backend and named shape; decode step per backend.

    pytest bench/
Backends that cannot run here are skipped with the reason (e.g. triton without CUDA, metal without MPS).
The naive loop is timed only on the small shapes and once per round (it is the oracle, not a contender).
Upstream's pure-torch `ssd_minimal_discrete` is timed beside them on CPU: its public source is fetched with pip
into a cache folder on first use (tests/upstream.py); without the package registry that column is skipped.
The side-by-side tables are printed at the end (bench/conftest.py).
"""
from __future__ import annotations

import math

import pytest
import torch

from mamba_compat import backends, mamba_chunk_scan_combined, selective_state_update
from shapes import CPU_SHAPES, GPU_SHAPES, Shape
from timing import sync as _sync

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else []) + (
    ["mps"] if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available() else [])
BACKENDS = ["naive", "reference", "cpu", "triton", "metal"]


def _cases():
    for device in ("cpu", "cuda", "mps"):
        for shape in (CPU_SHAPES if device == "cpu" else GPU_SHAPES):
            for backend in BACKENDS:
                yield pytest.param(device, shape, backend, id=f"{device}-{shape.name}-{backend}")


def _skip_unless_runnable(device, backend, shape):
    if device not in DEVICES:
        pytest.skip(f"no {device} device on this machine")
    ok, why = backends.status(backend, torch.device(device))
    if not ok or (backend == "triton" and device != "cuda"):
        pytest.skip(f"{backend} cannot run here: {why}")
    if backend == "naive" and shape.b * shape.l * shape.h * shape.p * shape.n > 2**28:
        pytest.skip("naive loop: too slow for this shape")


def _rounds(backend):
    return dict(rounds=1, warmup_rounds=0) if backend == "naive" else dict(rounds=10, warmup_rounds=1)


def _run(shape: Shape, kw, backend):
    return mamba_chunk_scan_combined(kw["x"], kw["dt"], kw["A"], kw["B"], kw["C"], shape.chunk, D=kw["D"],
                                     dt_bias=kw["dt_bias"], dt_softplus=True, return_final_states=True,
                                     backend=backend)


def _check_against_reference(shape, kw, backend):
    y, s = _run(shape, kw, backend)
    if backend != "reference":
        with torch.no_grad():
            y0, s0 = _run(shape, {k: v.detach() for k, v in kw.items()}, "reference")
        tol = 1e-2 if shape.dtype != torch.float32 else 1e-4
        rel = ((y.float() - y0.float()).norm() / y0.float().norm()).item()
        assert rel < tol, f"{backend} differs from the reference: relative error {rel:.2e}"
    return y, s


@pytest.mark.parametrize("device,shape,backend", list(_cases()))
def test_forward(benchmark, record_time, device, shape, backend):
    _skip_unless_runnable(device, backend, shape)
    kw = shape.make(device)
    _check_against_reference(shape, kw, backend)

    def fwd():
        with torch.no_grad():
            out = _run(shape, kw, backend)
        _sync(device)
        return out

    benchmark.pedantic(fwd, **_rounds(backend))
    benchmark.extra_info.update(flops=shape.flops_fwd(), bytes=shape.bytes_fwd())
    record_time("SSD forward", device, shape.name, backend, benchmark, shape.flops_fwd())


@pytest.mark.parametrize("device,shape,backend", list(_cases()))
def test_forward_backward(benchmark, record_time, device, shape, backend):
    _skip_unless_runnable(device, backend, shape)
    kw = shape.make(device, requires_grad=True)
    _check_against_reference(shape, kw, backend)
    gen = torch.Generator(device="cpu").manual_seed(1)
    dy = torch.randn(shape.b, shape.l, shape.h, shape.p, generator=gen).to(device, shape.dtype)

    def fwd_bwd():
        y, s = _run(shape, kw, backend)
        torch.autograd.backward([y, s], [dy, torch.ones_like(s)])
        _sync(device)

    benchmark.pedantic(fwd_bwd, **_rounds(backend))
    benchmark.extra_info.update(flops=3 * shape.flops_fwd())
    record_time("SSD forward+backward", device, shape.name, backend, benchmark, 3 * shape.flops_fwd())


def _ssd_minimal():
    from upstream import UpstreamUnavailable, import_upstream
    try:
        return import_upstream("modules.ssd_minimal").ssd_minimal_discrete
    except UpstreamUnavailable as err:
        pytest.skip(f"upstream mamba_ssm could not be fetched ({str(err).splitlines()[0]})")


@pytest.mark.parametrize("direction", ["forward", "forward+backward"])
def test_ssd_minimal_anchor_cpu(benchmark, record_time, direction):
    """Upstream's pure-torch ssd_minimal (Listing 1 of the paper) at the CPU shapes, same inputs and dt processing."""
    ssd_minimal = _ssd_minimal()
    shape = CPU_SHAPES[0]
    kw = shape.make("cpu", requires_grad=True)

    def run():
        dtv = torch.nn.functional.softplus(kw["dt"] + kw["dt_bias"])
        if direction == "forward":
            with torch.no_grad():
                return ssd_minimal(kw["x"] * dtv[..., None], kw["A"] * dtv, kw["B"], kw["C"], shape.chunk)
        y, s = ssd_minimal(kw["x"] * dtv[..., None], kw["A"] * dtv, kw["B"], kw["C"], shape.chunk)
        (y.sum() + s.sum()).backward()

    benchmark.pedantic(run, rounds=5, warmup_rounds=1)
    work = shape.flops_fwd() * (1 if direction == "forward" else 3)
    record_time(f"SSD {direction}", "cpu", shape.name, "upstream ssd_minimal", benchmark, work)


@pytest.mark.parametrize("device", ["cpu", "cuda", "mps"])
@pytest.mark.parametrize("batch", [64, 4096])
@pytest.mark.parametrize("backend", ["reference", "triton", "metal"])
def test_decode_step(benchmark, record_time, device, batch, backend):
    if device not in DEVICES:
        pytest.skip(f"no {device} device on this machine")
    ok, why = backends.status(backend, torch.device(device))
    if not ok or (backend == "triton" and device != "cuda"):
        pytest.skip(f"{backend} cannot run here: {why}")
    h, p, n = 4, 64, 64
    gen = torch.Generator(device="cpu").manual_seed(0)
    state = torch.randn(batch, h, p, n, generator=gen).to(device)
    x = torch.randn(batch, h, p, generator=gen).to(device)
    dt = torch.randn(batch, h, generator=gen).to(device)[..., None].expand(batch, h, p)
    A = (-torch.rand(h, generator=gen) - 1).to(device)[:, None, None].expand(h, p, n)
    B = torch.randn(batch, 1, n, generator=gen).to(device)
    C = torch.randn(batch, 1, n, generator=gen).to(device)

    def step():
        out = selective_state_update(state, x, dt, A, B, C, dt_softplus=True, backend=backend)
        _sync(device)
        return out

    benchmark.pedantic(step, rounds=20, warmup_rounds=2)
    benchmark.extra_info.update(state_bytes=2 * state.numel() * 4)
    record_time("decode step", device, f"{batch} x H4 P64 N64", backend, benchmark)
