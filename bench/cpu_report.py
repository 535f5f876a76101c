"""CPU figures for the SSD op at a named shape: reference vs naive vs upstream's ssd_minimal (its public source is
fetched with pip into a cache folder on first use, tests/upstream.py), forward and forward+backward, in one run:
times, ratios, achieved GFLOP/s against this machine's fp32 matmul rate measured in the same run, and the peak
resident memory of each measurement (Linux: VmHWM, reset before each case).

    python bench/cpu_report.py            # b4 L1024 H8 P64 N64 chunk 64 fp32
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import os
import platform
import sys

import torch

from shapes import CPU_SHAPES

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))


def reset_peak():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_mb():
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def timeit(fn, reps):
    fn()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def matmul_rate():
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    t = timeit(lambda: a @ b, 5)
    return 2 * 2048 ** 3 / t / 1e9


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default=CPU_SHAPES[0].name, choices=[s.name for s in CPU_SHAPES])
    ap.add_argument("--naive-reps", type=int, default=1)
    ap.add_argument("--reps", type=int, default=7)
    args = ap.parse_args()
    shape = next(s for s in CPU_SHAPES if s.name == args.shape)
    from mamba_compat import mamba_chunk_scan_combined

    kw = shape.make("cpu", requires_grad=True)
    rows = []

    def case(name, f, reps):
        def fwd():
            with torch.no_grad():
                f()

        def fwd_bwd():
            y, s = f()
            (y.square().sum() + s.sum()).backward()

        reset_peak()
        t_f = timeit(fwd, reps)
        m_f = peak_mb()
        reset_peak()
        t_b = timeit(fwd_bwd, reps)
        m_b = peak_mb()
        rows.append(dict(name=name, fwd_ms=t_f * 1e3, fwd_bwd_ms=t_b * 1e3, fwd_gflops=shape.flops_fwd() / t_f / 1e9,
                         fwd_bwd_gflops=3 * shape.flops_fwd() / t_b / 1e9, peak_fwd_mb=m_f, peak_fwd_bwd_mb=m_b))

    for backend, reps in (("reference", args.reps), ("naive", args.naive_reps)):
        case(backend, lambda b=backend: mamba_chunk_scan_combined(
            kw["x"], kw["dt"], kw["A"], kw["B"], kw["C"], shape.chunk, dt_bias=kw["dt_bias"], dt_softplus=True,
            return_final_states=True, backend=b), reps)
    from upstream import UpstreamUnavailable, import_upstream
    try:
        ssd_minimal_discrete = import_upstream("modules.ssd_minimal").ssd_minimal_discrete
    except UpstreamUnavailable as err:
        print(f"upstream ssd_minimal not timed: {str(err).splitlines()[0]}")
        ssd_minimal_discrete = None
    if ssd_minimal_discrete is not None:
        def minimal():
            dtv = torch.nn.functional.softplus(kw["dt"] + kw["dt_bias"])
            return ssd_minimal_discrete(kw["x"] * dtv[..., None], kw["A"] * dtv, kw["B"], kw["C"], shape.chunk)
        case("ssd_minimal (upstream)", minimal, args.reps)

    rate = matmul_rate()
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"shape {shape.name}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"fp32 2048^3 matmul {rate:.0f} GFLOP/s, forward work {shape.flops_fwd() / 1e9:.2f} GFLOP")
    print("| implementation | fwd ms | fwd+bwd ms | fwd GFLOP/s | fwd+bwd GFLOP/s | peak MB fwd | peak MB fwd+bwd |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['name']} | {r['fwd_ms']:.1f} | {r['fwd_bwd_ms']:.1f} | {r['fwd_gflops']:.0f} | "
              f"{r['fwd_bwd_gflops']:.0f} | {r['peak_fwd_mb']:.0f} | {r['peak_fwd_bwd_mb']:.0f} |")
    ref = rows[0]
    for r in rows[1:]:
        print(f"reference speed-up vs {r['name']}: fwd {r['fwd_ms'] / ref['fwd_ms']:.1f}x, "
              f"fwd+bwd {r['fwd_bwd_ms'] / ref['fwd_bwd_ms']:.1f}x")
    print(json.dumps(dict(shape=shape.name, matmul_gflops=rate, rows=rows)))


if __name__ == "__main__":
    main()
