"""Tile sweep of the Triton conv1d backward on one GPU, at the RL update's shape and at Mamba2 LLM shapes.

    PYTHONPATH=. python3 bench/gpu_conv_bwd_sweep.py

Each (BT, BC, num_warps) config, with the SiLU backward fused (a recomputed inside the backward kernel) and as
two passes (g = dy * silu'(a) first, then the plain backward), is checked against the default config's result (dx, dweight, dbias, dstate
to rounding) and timed (CUDA events, median); prints ms per config and shape, the best config per shape and
each config's worst ratio to the best over all shapes.
"""
from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mamba_compat.ops.conv1d import triton as conv_tri  # noqa: E402
from timing import cuda_median_ms  # noqa: E402

SHAPES = [  # (name, b, L, C, dtype, seg, window)
    ("RL update b512 L200 C160 fp32 seg+window", 512, 200, 160, torch.float32, True, True),
    ("LLM b8 L2048 C2304 bf16", 8, 2048, 2304, torch.bfloat16, False, False),
    ("LLM b1 L8192 C2304 bf16", 1, 8192, 2304, torch.bfloat16, False, False),
]
TILES = [(16, 128, 4), (16, 64, 2), (32, 64, 4), (32, 32, 4), (16, 256, 8), (64, 64, 8)]
CONFIGS = [(t, mode) for mode in ("fused", "two-pass") for t in TILES]


def main():
    torch.manual_seed(0)
    results = {}
    for name, b, L, C, dt, seg, window in SHAPES:
        x = torch.randn(b, L, C, device="cuda", dtype=dt)
        dy = torch.randn_like(x)
        w = torch.randn(C, 4, device="cuda", dtype=dt) * 0.5
        bias = torch.randn(C, device="cuda", dtype=dt)
        st = torch.randn(b, C, 4, device="cuda", dtype=dt) if window else None
        sg = (torch.rand(b, L, device="cuda") < 0.01).int().cumsum(1).int() if seg else None
        ref = None
        for cfg in CONFIGS:
            tiles, mode = cfg
            run = lambda: conv_tri.conv1d_bwd(dy, x, w, bias, st, sg, True, cfg=tiles,  # noqa: E731
                                              two_pass=mode == "two-pass")
            out = run()
            if ref is None:
                ref = out
            else:
                for a, r in zip(out, ref):
                    if r is not None:
                        err = float((a.float() - r.float()).abs().max() / r.float().abs().max().clamp_min(1e-30))
                        if not err < 1e-2:
                            print(f"MISMATCH {name} {cfg}: {err:.2e} vs the first config", flush=True)
            results[(name, cfg)] = cuda_median_ms(run, reps=30, warm=3)
        fwd = cuda_median_ms(lambda: conv_tri.conv1d_fwd(x, w, bias, st, sg, True), reps=30, warm=3)  # noqa: B023
        best = min(CONFIGS, key=lambda c: results[(name, c)])
        print(f"{name}: forward {fwd:.3f} ms; backward " + "  ".join(f"{c}={results[(name, c)]:.3f}" for c in CONFIGS)
              + f"  | best {best} {results[(name, best)]:.3f} ms", flush=True)
    print("config: worst ratio to the per-shape best")
    for c in CONFIGS:
        worst = max(results[(n[0], c)] / min(results[(n[0], d)] for d in CONFIGS) for n in SHAPES)
        print(f"  {c}: {worst:.2f}x")


if __name__ == "__main__":
    main()
