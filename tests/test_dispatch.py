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
    for name in ("naive", "reference"):
        real = ssd.chunk_scan_impl(name)

        def spy(*a, _name=name, _real=real):
            seen.append(_name)
            return _real(*a)
        monkeypatch.setitem(ssd._IMPLS, name, spy)
    return seen


def _call(**kw):
    return mamba_chunk_scan_combined(chunk_size=8, **make_problem(l=9, dtype=torch.float32), **kw)


def test_auto_is_reference_on_cpu(calls, monkeypatch):
    monkeypatch.delenv("MAMBA_COMPAT_BACKEND", raising=False)
    _call()
    assert calls == ["reference"]


def test_set_backend_and_env_var(calls, monkeypatch):
    mamba_compat.set_backend("naive")
    _call()
    mamba_compat.set_backend(None)
    monkeypatch.setenv("MAMBA_COMPAT_BACKEND", "naive")
    _call()
    mamba_compat.set_backend("reference")  # set_backend wins over the environment
    _call()
    assert calls == ["naive", "naive", "reference"]
    assert mamba_compat.get_backend() == "reference"


def test_per_call_backend(calls):
    _call(backend="naive")
    _call(backend="reference")
    assert calls == ["naive", "reference"]


def test_backend_info_reports_cpu():
    info = mamba_compat.backend_info()
    cpu = info["devices"]["cpu"]
    assert cpu["auto"] == "reference"
    assert {"reference", "naive"} <= set(cpu["available"])
    assert "metal" not in cpu["available"]
    assert "MPS" in cpu["status"]["metal"]


def test_mps_without_extension_warns_once(monkeypatch):
    monkeypatch.setattr(backends, "_warned_mps", False)
    monkeypatch.setattr(backends, "metal_status", lambda device: (False, "the Metal extension is not built"))
    with pytest.warns(UserWarning, match="reference scan on MPS because the Metal extension is not built"):
        assert backends.resolve(torch.device("mps")) == "reference"
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert backends.resolve(torch.device("mps")) == "reference"
