"""CPU figures for the SSD op at a named shape: the cpu backend and the reference vs naive vs upstream's ssd_minimal
(its public source is fetched with pip into a cache folder on first use, tests/upstream.py), forward and
forward+backward, in one run: times, ratios, achieved GFLOP/s against this machine's fp32 matmul rate measured in the
same run, and the peak resident memory of each measurement (Linux: VmHWM, reset before each case; in one process
these depend on the order the cases run, since freed memory stays resident — compare peaks in fresh processes).

Timing: --rounds rounds, each timing every case --reps times in turn (the cases interleaved, so a burst of load from
another process hits all of them); each figure is the minimum over all rounds. Before any time is reported the cpu
backend's output, final state and gradients are checked against the reference's at the shape.

    python bench/cpu_report.py            # b4 L1024 H8 P64 N64 chunk 64 fp32
    python bench/cpu_report.py --shape B16_T200_H4_P16_N16_C64 --naive-reps 0
"""
from __future__ import annotations

import argparse
import json
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


def min_time(fn, reps):
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return min(ts)


def matmul_rate():
    """fp32 GFLOP/s of a 2048^3 matmul (the best of 5)."""
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    a @ b
    return 2 * 2048 ** 3 / min_time(lambda: a @ b, 5) / 1e9


def check_cpu_vs_reference(kw, shape, scan):
    """max |cpu - reference| / max |reference| of y, the final state and every gradient, at the bench's inputs."""
    out = {}
    for backend in ("reference", "cpu"):
        leaves = {k: v.detach().clone().requires_grad_(True) for k, v in kw.items()}
        y, s = scan(leaves, backend)
        (y.square().sum() + s.sum()).backward()
        out[backend] = dict(y=y.detach(), final=s.detach(), **{f"d{k}": leaves[k].grad for k in ("x", "dt", "A", "B", "C", "dt_bias")})
    return {k: ((out["cpu"][k] - r).abs().max() / r.abs().max()).item() for k, r in out["reference"].items()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default=CPU_SHAPES[0].name, choices=[s.name for s in CPU_SHAPES])
    ap.add_argument("--naive-reps", type=int, default=1, help="0 skips the naive loop")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    shape = next(s for s in CPU_SHAPES if s.name == args.shape)
    from mamba_compat import mamba_chunk_scan_combined

    kw = shape.make("cpu", requires_grad=True)
    kw = {k: kw[k] for k in ("x", "dt", "A", "B", "C", "dt_bias")}

    def scan(t, backend):
        return mamba_chunk_scan_combined(t["x"], t["dt"], t["A"], t["B"], t["C"], shape.chunk, dt_bias=t["dt_bias"],
                                         dt_softplus=True, return_final_states=True, backend=backend)

    errors = check_cpu_vs_reference(kw, shape, scan)
    cases = [(b, lambda b=b: scan(kw, b), args.reps) for b in ("cpu", "reference")]
    if args.naive_reps:
        cases.append(("naive", lambda: scan(kw, "naive"), args.naive_reps))
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
        cases.append(("ssd_minimal (upstream)", minimal, args.reps))

    best = {name: dict(fwd=float("inf"), fwd_bwd=float("inf")) for name, _, _ in cases}
    rate = 0.0
    for r in range(args.rounds):
        rate = max(rate, matmul_rate())
        for name, f, reps in cases:
            if name == "naive" and r:
                continue  # one round of the loop is enough (minutes at the large shape)

            def fwd():
                with torch.no_grad():
                    f()

            def fwd_bwd():
                y, s = f()
                (y.square().sum() + s.sum()).backward()

            fwd()
            reset_peak()
            best[name]["fwd"] = min(best[name]["fwd"], min_time(fwd, reps))
            best[name].setdefault("peak_fwd_mb", peak_mb())
            fwd_bwd()
            reset_peak()
            best[name]["fwd_bwd"] = min(best[name]["fwd_bwd"], min_time(fwd_bwd, reps))
            best[name].setdefault("peak_fwd_bwd_mb", peak_mb())
    rows = []
    for name, b in best.items():
        rows.append(dict(name=name, fwd_ms=b["fwd"] * 1e3, fwd_bwd_ms=b["fwd_bwd"] * 1e3,
                         fwd_gflops=shape.flops_fwd() / b["fwd"] / 1e9,
                         fwd_bwd_gflops=3 * shape.flops_fwd() / b["fwd_bwd"] / 1e9,
                         peak_fwd_mb=b["peak_fwd_mb"], peak_fwd_bwd_mb=b["peak_fwd_bwd_mb"]))

    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"shape {shape.name}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"fp32 2048^3 matmul {rate:.0f} GFLOP/s (best in this run), forward work {shape.flops_fwd() / 1e9:.2f} GFLOP "
          f"(fwd+bwd counted as 3x); min of {args.rounds} rounds x {args.reps} reps")
    print("cpu vs reference, max abs diff / max abs: " + ", ".join(f"{k} {v:.1e}" for k, v in errors.items()))
    print("| implementation | fwd ms | fwd+bwd ms | fwd GFLOP/s (% of matmul) | fwd+bwd GFLOP/s (% of matmul) | "
          "peak MB fwd | peak MB fwd+bwd |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['name']} | {r['fwd_ms']:.1f} | {r['fwd_bwd_ms']:.1f} | {r['fwd_gflops']:.0f} "
              f"({100 * r['fwd_gflops'] / rate:.0f}%) | {r['fwd_bwd_gflops']:.0f} ({100 * r['fwd_bwd_gflops'] / rate:.0f}%) | "
              f"{r['peak_fwd_mb']:.0f} | {r['peak_fwd_bwd_mb']:.0f} |")
    by = {r["name"]: r for r in rows}
    for mine in ("cpu", "reference"):
        for other in rows:
            if other["name"] != mine and not (mine == "reference" and other["name"] == "cpu"):
                print(f"{mine} speed-up vs {other['name']}: fwd {other['fwd_ms'] / by[mine]['fwd_ms']:.2f}x, "
                      f"fwd+bwd {other['fwd_bwd_ms'] / by[mine]['fwd_bwd_ms']:.2f}x")
    print(json.dumps(dict(shape=shape.name, matmul_gflops=rate, cpu_vs_reference_errors=errors, rows=rows)))


if __name__ == "__main__":
    main()
