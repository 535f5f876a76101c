"""Fixtures of the Metal shim tests: the harness is compiled once per session (and cached on disk by
source hash), for the test chunk length 16 (several chunks at small L) and the shipped default."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from shim_build import Shim, build, compiler  # noqa: E402


REQUIRE_METAL = os.environ.get("MAMBA_COMPAT_REQUIRE_METAL") == "1"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """MAMBA_COMPAT_REQUIRE_METAL=1 (the macOS workflow): a skip is a failure, so a runner without MPS, an unbuilt
    extension or a missing compiler cannot pass by skipping everything."""
    outcome = yield
    rep = outcome.get_result()
    if REQUIRE_METAL and rep.skipped:
        rep.outcome = "failed"
        rep.longrepr = f"skipped under MAMBA_COMPAT_REQUIRE_METAL=1: {rep.longrepr}"


def _need_compiler():
    if compiler() is None:
        pytest.skip("no C++20 compiler (g++/clang++) to build the Metal shim harness")


@pytest.fixture(scope="session")
def shim_lib():
    _need_compiler()
    return build(16)


@pytest.fixture(scope="session")
def shim(shim_lib):
    return Shim(shim_lib)


@pytest.fixture(scope="session")
def shim_reverse(shim_lib):
    """The same kernels with the simulated threads of each group scheduled in reverse order."""
    return Shim(shim_lib, reverse=True)


@pytest.fixture(scope="session")
def shim_default():
    """Built with the chunk length the extension ships (SSD_Q default, 64)."""
    _need_compiler()
    return Shim(build(None))


@pytest.fixture(scope="session")
def shim_half():
    """The library the glue compiles for float16 inputs (SSD_IN_T=half; the shim's half is _Float16)."""
    _need_compiler()
    try:
        return Shim(build(16, in_t="half"))
    except RuntimeError as e:
        pytest.skip(f"this compiler has no _Float16: {e}")
