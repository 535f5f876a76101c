"""Fixtures of the Metal shim tests: the harness is compiled once per session (and cached on disk by
source hash), for the test chunk length 16 (several chunks at small L) and the shipped default.

Every fixture runs a schedule no GPU guarantees against: threadgroups dealt out in a seeded shuffled order
(a new permutation per launch), two groups in flight at once with their threads interleaved at barriers,
threads forward, reverse or in a seeded random order. test_shim_schedules.py runs cases under several
schedules and requires bit-identical results."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from shim_build import SCHEDULE, Shim, build, compiler  # noqa: E402


REQUIRE_METAL = os.environ.get("MAMBA_COMPAT_REQUIRE_METAL") == "1"
# A skip whose reason contains this is a Linux-only check on macOS (the sanitizer run needs g++'s libasan),
# not a missing piece of the Metal setup: it stays a skip under MAMBA_COMPAT_REQUIRE_METAL=1.
PLATFORM_SKIP = "Linux-only check"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """MAMBA_COMPAT_REQUIRE_METAL=1 (the macOS workflow): a skip is a failure, so a runner without MPS, an unbuilt
    extension or a missing compiler cannot pass by skipping everything."""
    outcome = yield
    rep = outcome.get_result()
    if REQUIRE_METAL and rep.skipped and PLATFORM_SKIP not in str(rep.longrepr):
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
    return Shim(shim_lib, **SCHEDULE)


@pytest.fixture(scope="session")
def shim_reverse(shim_lib):
    """The same kernels with the simulated threads of each group scheduled in reverse order."""
    return Shim(shim_lib, reverse=True, seed=2, resident=2)


@pytest.fixture(scope="session")
def shim_random(shim_lib):
    """Threads in a seeded random order at every synchronization point."""
    return Shim(shim_lib, order="random", seed=3, resident=2)


@pytest.fixture(scope="session")
def shim_default():
    """Built with the chunk length the extension ships (SSD_Q default, 64)."""
    _need_compiler()
    return Shim(build(None), **SCHEDULE)


@pytest.fixture(scope="session")
def shim_half():
    """The library the glue compiles for float16 inputs (SSD_IN_T=half; the shim's half is _Float16)."""
    _need_compiler()
    try:
        return Shim(build(16, in_t="half"), **SCHEDULE)
    except RuntimeError as e:
        pytest.skip(f"this compiler has no _Float16: {e}")


@pytest.fixture(scope="session")
def shim_bfloat():
    """The library the glue compiles for bfloat16 inputs (SSD_IN_T=bfloat; the shim's bfloat: bf16 storage,
    round-to-nearest-even from float, arithmetic in float)."""
    _need_compiler()
    return Shim(build(16, in_t="bfloat"), **SCHEDULE)
