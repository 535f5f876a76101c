"""The Triton forward's split (state pass + y over groups of K chunks) vs its one-launch form, per shape.

    PYTHONPATH=.:.anchor python3 bench/gpu_fwd_split.py

For each shape: the heuristic's choice (`fwd_split`), every forced K (MAMBA_COMPAT_TRITON_FWD_SPLIT), the
relative difference of y to the one-launch forward, and the mamba_ssm anchor when `.anchor/` is importable.
Medians of triton.testing.do_bench in ms, eager calls (host overhead included).
"""
import math
import os
import sys

import torch
from triton.testing import do_bench

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import gpu_bench as gb  # noqa: E402
from mamba_compat.ops.ssd import triton as ours  # noqa: E402

SHAPES = {  # b, L, h, p, n, g, dtype, chunk
    "LM b8 L2048 H32 P64 N128 bf16": (8, 2048, 32, 64, 128, 1, torch.bfloat16, 256),
    "RL b64 L256 H4 P64 N64 fp32": (64, 256, 4, 64, 64, 1, torch.float32, 64),
    "long b1 L16384 H8 P64 N128 bf16": (1, 16384, 8, 64, 128, 1, torch.bfloat16, 256),
}


def timed(fn):
    fn()
    torch.cuda.synchronize()
    return do_bench(fn, warmup=50, rep=300, return_mode="median")


def main():
    print(f"{torch.cuda.get_device_name()}; anchor: {'ok' if gb.anchor_scan is not None else gb.ANCHOR_ERR}")
    for label, (b, L, h, p, n, g, dtype, chunk) in SHAPES.items():
        x, dt, A, B, C, D, z, dtb = gb.make_inputs(b, L, h, p, n, g, dtype)

        def fwd():
            return ours.chunk_scan(x, dt, A, B, C, chunk, D, None, dtb, None, None, True, 0.0, math.inf)

        os.environ.pop("MAMBA_COMPAT_TRITON_FWD_SPLIT", None)
        nchunks = -(-L // ours.kernel_chunk(chunk, L))
        row = {f"auto (K={ours.fwd_split(b, h, p, nchunks, x.device)})": timed(fwd)}
        base = None
        for k in (0, 2, 4, 8, 16):
            if k >= nchunks:
                continue
            os.environ["MAMBA_COMPAT_TRITON_FWD_SPLIT"] = str(k)
            y, _ = fwd()
            base = y.float() if base is None else base
            row[f"K={k}"] = timed(fwd)
            row[f"K={k} rel diff"] = float((y.float() - base).norm() / base.norm())
        os.environ.pop("MAMBA_COMPAT_TRITON_FWD_SPLIT", None)
        if gb.anchor_scan is not None:
            row["anchor"] = timed(lambda: gb.anchor_scan(x, dt, A, B, C, chunk, D=D, dt_bias=dtb, dt_softplus=True))
        print(label + ": " + ", ".join(f"{k} {v:.1e}" if "diff" in k else f"{k} {v:.4f}" for k, v in row.items()),
              flush=True)


if __name__ == "__main__":
    main()
