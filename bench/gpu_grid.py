"""The SSD op on a grid of shapes, ours vs upstream mamba_ssm's `mamba_chunk_scan_combined`, same card, same run.

Axes (ISSUE 11): b in {1, 2, 8, 64}, L in {256, 2048, 8192, 32768, 65536}, H in {4, 24, 32, 80, 128},
ngroups in {1, 8, H}, N in {64, 128}, bf16 and fp32, with and without seq_idx / initial_states / z; headdim 64,
chunk_size 256 (upstream's Mamba2 default), dt_softplus, D (H,), dt_bias, final states returned.
Every (b, L, H) with b*L*H <= 2**24 (x at most 2 GiB in bf16) is run; the other axes are walked in turn across
that list (each value meets many (b, L, H)), so the grid is about 70 shapes rather than thousands.

Per shape: one forward compared with upstream's (relative RMSE of y, printed, not asserted: the tests check
correctness against the float64 reference), then forward and forward+backward timed with CUDA events (median
of `reps` calls, min over two interleaved rounds). ratio = upstream ms / ours ms (> 1: ours faster).
Prints one line per shape as it goes and the min / median / worst shape at the end; JSON lines to
$OUT/gpu_grid.jsonl.

    PYTHONPATH=.:.anchor python3 bench/gpu_grid.py [--limit N] [--only b:L:H,...] [--budget SECONDS] [--plain]
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import random
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mamba_compat.ops.ssd import triton as ours  # noqa: E402
from timing import cuda_median_ms  # noqa: E402

from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined as upstream  # noqa: E402

DEV = "cuda"
BS, LS, HS = (1, 2, 8, 64), (256, 2048, 8192, 32768, 65536), (4, 24, 32, 80, 128)
OPTIONS = ("", "z", "seq+init", "seq+init+z")


def grid():
    """[(b, L, H, G, N, dtype, options)]: every (b, L, H) within the size cap, each paired with one combination of
    the other axes (their 48 combinations walked with a stride prime to 48, so no two axes move together), in a
    fixed shuffled order (a run cut short by --budget still covers every axis)."""
    small = list(itertools.product(range(3), (64, 128), (torch.bfloat16, torch.float32), OPTIONS))
    out = []
    big = [s for s in itertools.product(BS, LS, HS) if s[0] * s[1] * s[2] <= 2 ** 24]
    for i, (b, L, H) in enumerate(big):
        gi, N, dtype, opts = small[(i * 7) % len(small)]
        gs = sorted({g for g in (1, 8, H) if H % g == 0})
        out.append((b, L, H, gs[gi % len(gs)], N, dtype, opts))
    random.Random(0).shuffle(out)
    return out


def inputs(b, L, H, G, N, dtype, opts, P=64):
    gen = torch.Generator(device=DEV).manual_seed(0)
    r = lambda *s, dt=dtype: torch.randn(*s, device=DEV, generator=gen).to(dt)  # noqa: E731
    kw = dict(D=r(H, dt=torch.float32), dt_bias=r(H, dt=torch.float32) * 0.5)
    if "z" in opts:
        kw["z"] = r(b, L, H, P)
    if "init" in opts:
        kw["initial_states"] = r(b, H, P, N, dt=torch.float32)
    if "seq" in opts:  # about four sequences per row
        kw["seq_idx"] = (torch.rand(b, L, device=DEV, generator=gen) < 4.0 / L).int().cumsum(1).int()
    x, dt = r(b, L, H, P), r(b, L, H, dt=torch.float32) * 0.5 - 1.0
    A = -torch.exp(torch.rand(H, device=DEV, generator=gen) * math.log(16))
    return (x, dt, A, r(b, L, G, N), r(b, L, G, N)), kw


def call(which, args, kw):
    if which == "ours":
        return ours.chunk_scan(*args, 256, kw["D"], kw.get("z"), kw["dt_bias"], kw.get("initial_states"),
                               kw.get("seq_idx"), True)
    return upstream(*args, 256, dt_softplus=True, return_final_states=True, **kw)


def run(shape):
    b, L, H, G, N, dtype, opts = shape
    args, kw = inputs(*shape)
    y_o, _ = call("ours", args, kw)
    y_u, _ = call("upstream", args, kw)
    err = ((y_o.double() - y_u.double()).norm() / y_u.double().norm()).item()
    leaves = [t.detach().clone().requires_grad_(True) for t in args]
    kwl = {k: (v.detach().clone().requires_grad_(True) if v.is_floating_point() else v) for k, v in kw.items()}
    diff = leaves + [v for v in kwl.values() if v.requires_grad]
    gy = torch.randn_like(y_o)
    tokens = b * L
    reps = max(3, min(20, int(2 ** 22 // (tokens * H) + 3)))
    row = dict(b=b, L=L, H=H, G=G, N=N, dtype=str(dtype).split(".")[-1], opts=opts, err_vs_upstream=err)
    for rnd in range(2):
        for which in ("ours", "upstream"):
            with torch.no_grad():
                f = cuda_median_ms(lambda: call(which, args, kw), reps)

            def fb():
                y, fin = call(which, leaves, kwl)
                torch.autograd.grad((y, fin), diff, (gy, torch.ones_like(fin)))

            fbt = cuda_median_ms(fb, reps)
            row[f"{which} fwd"] = min(f, row.get(f"{which} fwd", f))
            row[f"{which} fwdbwd"] = min(fbt, row.get(f"{which} fwdbwd", fbt))
    row["fwd x"] = row["upstream fwd"] / row["ours fwd"]
    row["fwdbwd x"] = row["upstream fwdbwd"] / row["ours fwdbwd"]
    del args, kw, leaves, kwl
    torch.cuda.empty_cache()
    return row


def label(r):
    return f"b{r['b']} L{r['L']} H{r['H']} G{r['G']} N{r['N']} {r['dtype']} {r['opts'] or '-'}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--limit", type=int, default=0, help="only the first N shapes")
    ap.add_argument("--only", default="", help="comma list of b:L:H to run (others skipped)")
    ap.add_argument("--budget", type=float, default=1e9, help="stop starting shapes after this many seconds")
    ap.add_argument("--plain", action="store_true",
                    help="bf16, N128, no z / seq_idx / initial_states on every shape (b, L, H, G as the grid): one "
                         "set of kernel builds for both sides, so many shapes fit in a short run")
    a = ap.parse_args()
    shapes = grid()
    if a.plain:
        shapes = [(b, L, H, G, 128, torch.bfloat16, "") for b, L, H, G, _, _, _ in shapes]
    if a.only:
        want = {tuple(map(int, s.split(":"))) for s in a.only.split(",")}
        shapes = [s for s in shapes if s[:3] in want]
    if a.limit:
        shapes = shapes[:a.limit]
    props = torch.cuda.get_device_properties(0)
    import triton
    print(f"{props.name} ({props.multi_processor_count} SMs), torch {torch.__version__}, triton {triton.__version__}, "
          f"{time.strftime('%Y-%m-%d')}; {len(shapes)} shapes; ratio = upstream / ours", flush=True)
    path = os.path.join(os.environ.get("OUT", "."), "gpu_grid.jsonl")
    rows, t0 = [], time.time()
    with open(path, "w") as f:
        for s in shapes:
            if time.time() - t0 > a.budget:
                print(f"budget reached after {len(rows)} shapes", flush=True)
                break
            try:
                r = run(s)
            except Exception as e:  # noqa: BLE001 - a shape that fails is reported, the grid goes on
                r = dict(b=s[0], L=s[1], H=s[2], G=s[3], N=s[4], dtype=str(s[5]).split(".")[-1], opts=s[6],
                         error=repr(e)[:300])
                print(f"{label(r):44s} ERROR {r['error']}", flush=True)
                f.write(json.dumps(r) + "\n")
                continue
            rows.append(r)
            f.write(json.dumps(r) + "\n")
            f.flush()
            print(f"{label(r):44s} fwd {r['ours fwd']:8.3f} / {r['upstream fwd']:8.3f} = {r['fwd x']:5.2f}x   "
                  f"fwd+bwd {r['ours fwdbwd']:8.3f} / {r['upstream fwdbwd']:8.3f} = {r['fwdbwd x']:5.2f}x   "
                  f"err {r['err_vs_upstream']:.1e}", flush=True)
    for key in ("fwd x", "fwdbwd x"):
        if rows:
            vals = [r[key] for r in rows]
            worst = min(rows, key=lambda r: r[key])
            print(f"{key[:-2]:7s}: min {min(vals):.2f}x ({label(worst)}), median {statistics.median(vals):.2f}x, "
                  f"{sum(v >= 1.0 for v in vals)}/{len(vals)} shapes >= 1.0x")


if __name__ == "__main__":
    main()
