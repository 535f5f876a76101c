"""Backend selection: one op contract, several implementations, nothing above the op knows which ran.

    auto       triton on CUDA tensors, metal on MPS tensors when the extension is built, cpu on CPU tensors,
               reference otherwise
    cpu        the chunked SSD in PyTorch with a hand-written backward, laid out for the CPU (CPU tensors, every dtype)
    reference  chunked SSD in plain PyTorch (any device; the readable listing and the kernels' oracle)
    naive      sequential loop (any device; the test oracle, slow)
    triton     our Triton kernels (CUDA; CPU tensors only under TRITON_INTERPRET=1, for tests)
    metal      our Metal kernels (MPS; needs the extension that `pip install -e .` builds on macOS)

Force one with MAMBA_COMPAT_BACKEND=<name> or mamba_compat.set_backend(name). Forcing a backend that
cannot run on the tensors it gets raises BackendUnavailable with the reason and the fix: never a silent
fallback. Auto uses the reference, and warns once per device type, where the device's kernels cannot run (MPS
without the extension, CUDA without the triton package). float64 inputs go to the reference on CUDA and MPS under
auto (those kernels compute in fp32; a forced triton or metal refuses float64); on CPU the cpu backend takes them.
The conv, norm and decode step have no cpu-specific code: `cpu` runs their reference.
"""
from __future__ import annotations

import importlib
import os
import warnings
from typing import Optional

import torch

BACKENDS = ("auto", "cpu", "reference", "naive", "triton", "metal")
_forced: Optional[str] = None
_warned: set = set()  # device types auto has warned about
KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
"""Input dtypes the triton and metal kernels take (fp32 arithmetic); float64 runs on reference / naive."""


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


def cpu_status(device: torch.device) -> tuple[bool, str]:
    if device.type == "cpu":
        return True, "ok"
    return False, f"the cpu backend runs on CPU tensors (got {device.type}); use 'reference' for PyTorch on {device.type}"


def status(name: str, device: torch.device) -> tuple[bool, str]:
    if name in ("reference", "naive"):
        return True, "ok"
    if name == "cpu":
        return cpu_status(device)
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
    if device.type == "cpu":
        return "cpu"
    kernels = {"cuda": ("triton", triton_status), "mps": ("metal", metal_status)}.get(device.type)
    if kernels is None:
        return "reference"
    kernel, kernel_status = kernels
    ok, why = kernel_status(device)
    if ok:
        return kernel
    if device.type not in _warned:
        _warned.add(device.type)
        warnings.warn(f"mamba_compat: using the PyTorch reference on {device.type} because {why}", stacklevel=3)
    return "reference"


def resolve_for_call(name: Optional[str], device: torch.device, dtype: Optional[torch.dtype] = None) -> str:
    """The backend for one op call on inputs of `dtype`: `name` if given (checked like a forced one), else the
    forced or automatic choice for `device`. float64 inputs: auto gives the reference in place of triton / metal
    (cpu takes them); a forced triton / metal raises BackendUnavailable."""
    requested = get_backend() if name is None else _check_name(name)
    if requested == "auto":
        chosen = resolve(device)
        fp32_kernel = chosen in ("triton", "metal")
        return "reference" if fp32_kernel and dtype is not None and dtype not in KERNEL_DTYPES else chosen
    if name is None:
        resolve(device)  # a globally forced backend that cannot run raises there, with the way back to auto
    ok, why = status(requested, device)
    if not ok:
        raise BackendUnavailable(f"backend {requested!r} was requested but cannot run: {why}")
    if dtype is not None and dtype not in KERNEL_DTYPES and requested in ("triton", "metal"):
        raise BackendUnavailable(f"backend {requested!r} takes float32/float16/bfloat16 inputs (its kernels compute "
                                 f"in fp32), got {dtype}; use backend='reference' for {dtype}")
    return requested


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
            auto = ("triton" if "triton" in ok and d == "cuda" else "metal" if "metal" in ok else
                    "cpu" if d == "cpu" else "reference")
        info["devices"][d] = {"available": ok, "auto": auto, "status": avail}
    return info
