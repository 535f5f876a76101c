"""Tuning sweep of the Triton SSD's chunk-parallel passes: every forced group size K against the sequential passes.

    PYTHONPATH=.:.anchor python3 bench/gpu_fwd_split.py [--shapes 0,2,...] [--ks 0,8,16,32]

For each shape: the forward with MAMBA_COMPAT_TRITON_FWD_SPLIT=K (0 = sequential), then forward+backward with
the forward at its heuristic choice and MAMBA_COMPAT_TRITON_BWD_SPLIT=K; the heuristic's own K (`group_split`)
and upstream (mamba_ssm's `mamba_chunk_scan_combined`, chunk 256) beside them. Median ms of CUDA-event-timed
eager calls. The sequential grid's program count (b*h*cdiv(P, 32)) is printed: the heuristic keys on it.
"""
import math
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mamba_compat.ops.ssd import triton as ours  # noqa: E402
from timing import cuda_median_ms  # noqa: E402

try:
    from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined as upstream
except Exception:  # noqa: BLE001
    upstream = None

SHAPES = [  # b, L, H, G, N, dtype, z
    (1, 32768, 32, 1, 128, torch.bfloat16, False),
    (1, 65536, 24, 1, 128, torch.bfloat16, False),
    (2, 4096, 128, 8, 128, torch.bfloat16, False),
    (1, 8192, 80, 8, 128, torch.bfloat16, False),
    (1, 65536, 24, 1, 128, torch.bfloat16, True),
    (1, 8192, 80, 8, 64, torch.bfloat16, True),
    (2, 32768, 4, 1, 128, torch.bfloat16, False),
    (2, 4096, 128, 8, 128, torch.bfloat16, True),
    (8, 2048, 32, 1, 128, torch.bfloat16, False),
    (1, 16384, 8, 1, 128, torch.float32, False),
    (64, 256, 4, 1, 64, torch.float32, False),
    (64, 2048, 4, 1, 64, torch.float32, False),
]
KS = (0, 1, 2, 4, 8, 16, 32)


def timed(fn):
    return cuda_median_ms(fn, reps=10)


def main():
    import argparse
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="", help="indices into SHAPES (default: all)")
    ap.add_argument("--ks", default=",".join(map(str, KS)), help="group sizes to force (0 = sequential)")
    a = ap.parse_args()
    shapes = [SHAPES[int(i)] for i in a.shapes.split(",")] if a.shapes else SHAPES
    ks = [int(k) for k in a.ks.split(",")]
    print(f"{torch.cuda.get_device_name()} ({torch.cuda.get_device_properties(0).multi_processor_count} SMs); "
          f"upstream: {upstream is not None}; ms; K=0 is sequential", flush=True)
    for b, L, H, G, N, dtype, has_z in shapes:
        gen = torch.Generator(device="cuda").manual_seed(0)
        r = lambda *s, dt=dtype: torch.randn(*s, device="cuda", generator=gen).to(dt)  # noqa: E731
        x, dt, B, C = r(b, L, H, 64), r(b, L, H, dt=torch.float32) * 0.5 - 1, r(b, L, G, N), r(b, L, G, N)
        A = -torch.exp(torch.rand(H, device="cuda", generator=gen) * math.log(16))
        D, dtb = r(H, dt=torch.float32), r(H, dt=torch.float32) * 0.5
        z = r(b, L, H, 64) if has_z else None
        leaves = [t.detach().clone().requires_grad_(True) for t in (x, dt, A, B, C)]
        gy = torch.randn_like(x)
        nchunks = -(-L // ours.kernel_chunk(256, L))

        def fwd():
            return ours.chunk_scan(x, dt, A, B, C, 256, D, z, dtb, None, None, True)

        def fwdbwd():
            y, _ = ours.chunk_scan(*leaves, 256, D, z, dtb, None, None, True)
            torch.autograd.grad(y, leaves, gy)

        label = f"b{b} L{L} H{H} G{G} N{N} {str(dtype)[6:]}{' z' if has_z else ''} ({b * H * 2} programs)"
        auto_f = ours.group_split(b, H, 64, nchunks, x.device)
        auto_b = ours.group_split(b, H, 64, -(-L // ours.kernel_chunk(256, L, True)), x.device, True)
        cells_f, cells_b = [], []
        for k in ks:
            if k and k >= nchunks:
                continue
            os.environ["MAMBA_COMPAT_TRITON_FWD_SPLIT"] = str(k)
            cells_f.append(f"K{k} {timed(fwd):.3f}")
        os.environ.pop("MAMBA_COMPAT_TRITON_FWD_SPLIT")
        for k in ks:
            if k and k >= nchunks:
                continue
            os.environ["MAMBA_COMPAT_TRITON_BWD_SPLIT"] = str(k)
            cells_b.append(f"K{k} {timed(fwdbwd):.3f}")
        os.environ.pop("MAMBA_COMPAT_TRITON_BWD_SPLIT")
        up = ""
        if upstream is not None:
            uf = timed(lambda: upstream(x, dt, A, B, C, 256, D=D, z=z, dt_bias=dtb, dt_softplus=True))

            def ufb():
                y = upstream(*leaves, 256, D=D, z=z, dt_bias=dtb, dt_softplus=True)
                torch.autograd.grad(y, leaves, gy)

            up = f" | upstream fwd {uf:.3f} fwd+bwd {timed(ufb):.3f}"
        print(f"{label}: auto fwd K{auto_f} {timed(fwd):.3f}, auto fwd+bwd K{auto_b} {timed(fwdbwd):.3f}{up}\n"
              f"   fwd     {'  '.join(cells_f)}\n   fwd+bwd {'  '.join(cells_b)}", flush=True)
        del x, dt, B, C, z, leaves, gy
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
