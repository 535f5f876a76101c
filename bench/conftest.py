"""Benchmarks: `pytest bench/` times every backend this machine can run, side by side (pytest-benchmark).
Correctness against the reference is checked before anything is timed. Nothing here sets
TRITON_INTERPRET: interpreted Triton is a test tool, not something to time.

At the end one table per (what, device, shape) is printed with the implementations as columns (median ms, ratio to
the fastest, GFLOP/s where the work is counted), then the throughput figures (env-steps/s); pytest-benchmark's own
table is narrowed to median/min/rounds sorted by name (pass --benchmark-columns=... to widen it again)."""
import os
import sys
from collections import defaultdict

import pytest

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "tests"))  # tests/upstream.py

_TIMES = defaultdict(dict)  # (what, device, shape) -> {implementation: (median s, flops or None)}
_RATES = []  # (what, value, unit)


@pytest.hookimpl(trylast=True)
def pytest_configure(config):
    """Narrow pytest-benchmark's table unless the command line chose columns or a sort (after the plugin has made
    its session, whose settings are changed directly)."""
    session = getattr(config, "_benchmarksession", None)
    if session is None:
        return
    if not config.getoption("benchmark_columns"):
        session.columns = ["median", "min", "rounds"]
    if config.getoption("benchmark_sort") == "min" and "--benchmark-sort" not in " ".join(config.invocation_params.args):
        session.sort = "name"


@pytest.fixture
def record_time():
    """record_time(what, device, shape, implementation, benchmark, flops=None) after benchmark.pedantic(...)."""
    def rec(what, device, shape, impl, benchmark, flops=None):
        _TIMES[(what, device, shape)][impl] = (benchmark.stats.stats.median, flops)
    return rec


@pytest.fixture
def record_rate():
    """record_rate(what, value, unit): a throughput figure for the summary (e.g. env-steps/s)."""
    def rec(what, value, unit):
        _RATES.append((what, value, unit))
    return rec


def pytest_terminal_summary(terminalreporter):
    tr = terminalreporter
    if not _TIMES and not _RATES:
        return
    tr.section("side by side")
    for (what, device, shape), impls in sorted(_TIMES.items()):
        best = min(t for t, _ in impls.values())
        names = sorted(impls, key=lambda n: impls[n][0])
        tr.write_line(f"\n{what} on {device}, {shape}")
        tr.write_line(f"{'':>12s}" + "".join(f"{n:>22s}" for n in names))
        tr.write_line(f"{'ms':>12s}" + "".join(f"{impls[n][0] * 1e3:>22.3f}" for n in names))
        tr.write_line(f"{'x fastest':>12s}" + "".join(f"{impls[n][0] / best:>22.2f}" for n in names))
        if any(f for _, f in impls.values()):
            tr.write_line(f"{'GFLOP/s':>12s}" + "".join(f"{(impls[n][1] or 0) / impls[n][0] / 1e9:>22.1f}"
                                                         for n in names))
    if _RATES:
        tr.write_line("")
    for what, value, unit in _RATES:
        tr.write_line(f"{what}: {value:,.0f} {unit}")
