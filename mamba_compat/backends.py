"""Backend selection: one op contract, several implementations, nothing above the op knows which ran.

    auto       triton on CUDA tensors, metal on MPS tensors when the extension is built, reference otherwise
    reference  chunked SSD in plain PyTorch (any device)
    naive      sequential loop (any device; the test oracle, slow)
    triton     our Triton kernels (CUDA; CPU tensors only under TRITON_INTERPRET=1, for tests)
    metal      our Metal kernels (MPS; needs the extension that `pip install -e .` builds on macOS)

Force one with MAMBA_COMPAT_BACKEND=<name> or mamba_compat.set_backend(name). Forcing a backend that
cannot run on the tensors it gets raises BackendUnavailable with the reason and the fix: never a silent
fallback. The one warning: auto on MPS without the extension uses reference and says so once.
"""
from __future__ import annotations

import importlib
import os
import warnings
from typing import Optional

import torch

BACKENDS = ("auto", "reference", "naive", "triton", "metal")
_forced: Optional[str] = None
_warned_mps = False


class BackendUnavailable(RuntimeError):
    """A backend was asked for that cannot run here; the message says why and how to fix it."""


def _check_name(name: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    return name


def set_backend(name: Optional[str]) -> None:
    """Force a backend for every op call in this process (None or 'auto' restores automatic choice).
    Overrides MAMBA_COMPAT_BACKEND."""
    global _forced
    _forced = None if name in (None, "auto") else _check_name(name)


def get_backend() -> str:
    """The backend name in force: set_backend's, else MAMBA_COMPAT_BACKEND's, else 'auto'."""
    if _forced is not None:
        return _forced
    return _check_name(os.environ.get("MAMBA_COMPAT_BACKEND", "auto").strip() or "auto")


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def triton_status(device: torch.device) -> tuple[bool, str]:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False, "the triton package is not installed (pip install triton; it comes with CUDA builds of torch)"
    if device.type == "cuda":
        return True, "ok"
    if device.type == "cpu" and _interpreting():
        return True, "ok (TRITON_INTERPRET=1: interpreted on the CPU, for tests)"
    return False, (f"triton runs on CUDA tensors (got {device.type}); on CPU only for tests with TRITON_INTERPRET=1 "
                   "set before mamba_compat is imported")


def metal_status(device: torch.device) -> tuple[bool, str]:
    if device.type != "mps":
        return False, f"metal runs on MPS tensors (got {device.type})"
    try:
        importlib.import_module("mamba_compat._metal")
    except ImportError as e:
        return False, (f"the Metal extension is not available ({e}); on an Apple-silicon Mac run "
                       "`pip install -e . --no-build-isolation` with Xcode command-line tools installed")
    return True, "ok"


def status(name: str, device: torch.device) -> tuple[bool, str]:
    if name in ("reference", "naive"):
        return True, "ok"
    if name == "triton":
        return triton_status(device)
    if name == "metal":
        return metal_status(device)
    raise ValueError(name)


def resolve(device: torch.device) -> str:
    """The backend that runs for tensors on `device`; raises BackendUnavailable for a forced one that can't."""
    name = get_backend()
    if name != "auto":
        ok, why = status(name, device)
        if not ok:
            raise BackendUnavailable(f"backend {name!r} was requested but cannot run: {why}. "
                                     "Unset MAMBA_COMPAT_BACKEND / call mamba_compat.set_backend('auto') to choose "
                                     "automatically.")
        return name
    if device.type == "cuda" and triton_status(device)[0]:
        return "triton"
    if device.type == "mps":
        ok, why = metal_status(device)
        if ok:
            return "metal"
        global _warned_mps
        if not _warned_mps:
            _warned_mps = True
            warnings.warn(f"mamba_compat: using the PyTorch reference scan on MPS because {why}", stacklevel=3)
    return "reference"


def resolve_for_call(name: Optional[str], device: torch.device) -> str:
    """The backend for one op call: `name` if given (checked like a forced one), else `resolve(device)`."""
    if name is None:
        return resolve(device)
    _check_name(name)
    if name == "auto":
        return resolve(device)
    ok, why = status(name, device)
    if not ok:
        raise BackendUnavailable(f"backend {name!r} was requested but cannot run: {why}")
    return name


def backend_info() -> dict:
    """What is available and what auto would pick, per device type this machine has."""
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices.append("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        devices.append("mps")
    info = {"forced": get_backend(), "devices": {}}
    for d in devices:
        dev = torch.device(d)
        avail = {n: status(n, dev)[1] for n in BACKENDS[1:]}
        ok = [n for n in BACKENDS[1:] if status(n, dev)[0]]
        if _forced is None and os.environ.get("MAMBA_COMPAT_BACKEND", "auto") in ("", "auto"):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                auto = resolve(dev)
        else:
            auto = "triton" if "triton" in ok and d == "cuda" else ("metal" if "metal" in ok else "reference")
        info["devices"][d] = {"available": ok, "auto": auto, "status": avail}
    return info
