"""Upstream mamba_ssm's public Python source, fetched with pip into a cache folder, for parity tests and benches.

Nothing of upstream is part of this repository: the sdist of mamba-ssm (MAMBA_SSM_VERSION, default 2.3.2.post1)
is downloaded once with `pip download` (its CUDA build skipped) and its `mamba_ssm/` tree unpacked into

    $MAMBA_COMPAT_CACHE/mamba_ssm-<version>/mamba_ssm      (default cache: ~/.cache/mamba_compat)

The package's own `__init__.py` pulls CUDA extensions; callers import its submodules through `import_upstream`,
which mounts the tree as an empty `mamba_ssm` package. As a script it prints the folder to put on PYTHONPATH:

    PYTHONPATH=$(python tests/upstream.py) python bench/cpu_report.py
"""
from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import types

VERSION = os.environ.get("MAMBA_SSM_VERSION", "2.3.2.post1")


class UpstreamUnavailable(RuntimeError):
    """The upstream source could not be fetched; the message holds pip's output."""


def cache_root() -> str:
    return os.environ.get("MAMBA_COMPAT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "mamba_compat")


def upstream_root() -> str:
    """The folder holding `mamba_ssm/` (a mount point for PYTHONPATH), fetched on first use."""
    root = os.path.join(cache_root(), f"mamba_ssm-{VERSION}")
    if os.path.isfile(os.path.join(root, "mamba_ssm", "modules", "mamba2.py")):
        return root
    os.makedirs(cache_root(), exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_root()) as tmp:
        env = {**os.environ, "MAMBA_SKIP_CUDA_BUILD": "TRUE"}
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-build-isolation",
               f"mamba-ssm=={VERSION}", "-d", tmp]
        run = subprocess.run(cmd, capture_output=True, text=True, env=env)
        sdist = os.path.join(tmp, f"mamba_ssm-{VERSION}.tar.gz")
        if run.returncode != 0 or not os.path.isfile(sdist):
            raise UpstreamUnavailable(f"`{' '.join(cmd)}` failed (exit {run.returncode}):\n{run.stderr[-2000:]}")
        staged = os.path.join(tmp, "staged")
        with tarfile.open(sdist) as tar:
            prefix = f"mamba_ssm-{VERSION}/mamba_ssm/"
            members = [m for m in tar.getmembers() if m.name.startswith(prefix)]
            safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}  # Python >= 3.11.4
            tar.extractall(staged, members=members, **safe)
        # (unpacked under staged/mamba_ssm-<v>/mamba_ssm); rename into place so a half-written tree never shows
        with contextlib.suppress(OSError):  # another process may have finished first: keep theirs
            os.rename(os.path.join(staged, f"mamba_ssm-{VERSION}"), root)
    if not os.path.isfile(os.path.join(root, "mamba_ssm", "modules", "mamba2.py")):
        raise UpstreamUnavailable(f"the mamba-ssm {VERSION} sdist did not hold mamba_ssm/modules/mamba2.py")
    return root


def import_upstream(module: str):
    """Import `mamba_ssm.<module>` from the fetched tree without running upstream's package __init__ (which
    needs its CUDA extensions); huggingface_hub's mixin is stubbed if absent. sys.modules is restored."""
    root = upstream_root()

    def ours(k):
        return k == "mamba_ssm" or k.startswith("mamba_ssm.") or k == "huggingface_hub"

    saved = {k: v for k, v in sys.modules.items() if ours(k)}
    pkg = types.ModuleType("mamba_ssm")
    pkg.__path__ = [os.path.join(root, "mamba_ssm")]
    sys.modules["mamba_ssm"] = pkg
    if "huggingface_hub" not in sys.modules:
        hub = types.ModuleType("huggingface_hub")
        hub.PyTorchModelHubMixin = type("PyTorchModelHubMixin", (), {})
        sys.modules["huggingface_hub"] = hub
    try:
        import importlib
        return importlib.import_module(f"mamba_ssm.{module}")
    finally:
        for k in [k for k in sys.modules if ours(k)]:
            del sys.modules[k]
        sys.modules.update(saved)


def clear_cache() -> None:
    shutil.rmtree(os.path.join(cache_root(), f"mamba_ssm-{VERSION}"), ignore_errors=True)


if __name__ == "__main__":
    print(upstream_root())
