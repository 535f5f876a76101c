"""Backend selection: auto, set_backend, MAMBA_COMPAT_BACKEND, per-call override, backend_info."""
import pytest
import torch

import mamba_compat
from mamba_compat import backends, mamba_chunk_scan_combined
from mamba_compat.ops import ssd

from op_testing import make_problem


@pytest.fixture
def calls(monkeypatch):
    """Record which backend's chunk_scan ran."""
    seen = []
    for name in ("naive", "reference", "cpu"):
        real = ssd.chunk_scan_impl(name)

        def spy(*a, _name=name, _real=real):
            seen.append(_name)
            return _real(*a)
        monkeypatch.setitem(ssd._IMPLS, name, spy)
    return seen


def _call(**kw):
    return mamba_chunk_scan_combined(chunk_size=8, **make_problem(l=9, dtype=torch.float32), **kw)


def test_auto_is_cpu_on_cpu_for_every_dtype(calls, monkeypatch):
    monkeypatch.delenv("MAMBA_COMPAT_BACKEND", raising=False)
    _call()
    mamba_chunk_scan_combined(chunk_size=8, **make_problem(l=9, dtype=torch.float64))
    assert calls == ["cpu", "cpu"]
    assert backends.resolve_for_call(None, torch.device("cpu"), torch.bfloat16) == "cpu"


def test_cpu_backend_refuses_other_devices():
    with pytest.raises(backends.BackendUnavailable, match="cpu backend runs on CPU tensors \\(got meta\\)"):
        backends.resolve_for_call("cpu", torch.device("meta"), torch.float32)


def test_set_backend_and_env_var(calls, monkeypatch):
    mamba_compat.set_backend("naive")
    _call()
    mamba_compat.set_backend(None)
    monkeypatch.setenv("MAMBA_COMPAT_BACKEND", "naive")
    _call()
    mamba_compat.set_backend("reference")  # set_backend wins over the environment
    _call()
    assert mamba_compat.get_backend() == "reference"
    mamba_compat.set_backend("cpu")
    _call()
    assert calls == ["naive", "naive", "reference", "cpu"]


def test_per_call_backend(calls):
    _call(backend="naive")
    _call(backend="reference")
    assert calls == ["naive", "reference"]


def test_backend_info_reports_cpu():
    info = mamba_compat.backend_info()
    cpu = info["devices"]["cpu"]
    assert cpu["auto"] == "cpu"
    assert {"cpu", "reference", "naive"} <= set(cpu["available"])
    assert "metal" not in cpu["available"]
    assert "MPS" in cpu["status"]["metal"]


@pytest.mark.parametrize("device, status_fn, why", [("mps", "metal_status", "the Metal extension is not built"),
                                                     ("cuda", "triton_status", "the triton package is not installed")])
def test_auto_without_the_devices_kernels_warns_once(monkeypatch, device, status_fn, why):
    """auto on MPS without the extension, or on CUDA without triton, uses the reference and says so once."""
    monkeypatch.setattr(backends, "_warned", set())
    monkeypatch.setattr(backends, status_fn, lambda device: (False, why))
    with pytest.warns(UserWarning, match=f"PyTorch reference on {device} because {why}"):
        assert backends.resolve(torch.device(device)) == "reference"
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert backends.resolve(torch.device(device)) == "reference"


def test_float64_goes_to_the_reference_under_auto_and_a_forced_kernel_refuses(monkeypatch):
    monkeypatch.setattr(backends, "triton_status", lambda device: (True, "ok"))
    cuda = torch.device("cuda")
    assert backends.resolve_for_call(None, cuda, torch.float32) == "triton"
    assert backends.resolve_for_call(None, cuda, torch.float64) == "reference"
    assert backends.resolve_for_call("auto", cuda, torch.float64) == "reference"
    with pytest.raises(backends.BackendUnavailable, match="'triton' takes float32/float16/bfloat16 inputs.*float64"):
        backends.resolve_for_call("triton", cuda, torch.float64)
    mamba_compat.set_backend("triton")
    with pytest.raises(backends.BackendUnavailable, match="float64; use backend='reference'"):
        backends.resolve_for_call(None, cuda, torch.float64)
