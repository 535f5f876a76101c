"""Named benchmark problems for the SSD op, and their work counts (FLOPs, bytes)."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Shape:
    name: str
    b: int
    l: int
    h: int
    p: int
    n: int
    g: int = 1
    chunk: int = 64
    dtype: torch.dtype = torch.float32

    def flops_fwd(self) -> float:
        """Matmul FLOPs of the chunked algorithm: C.B per group, scores@x, chunk states, state->output."""
        q = min(self.chunk, self.l)
        return 2.0 * self.b * self.l * (self.g * q * self.n + self.h * q * self.p + 2 * self.h * self.p * self.n)

    def bytes_fwd(self) -> float:
        """Fewest bytes: read x, dt, B, C once, write y once."""
        es = torch.finfo(self.dtype).bits // 8
        return es * self.b * self.l * (2 * self.h * self.p + 2 * self.g * self.n) + 4 * self.b * self.l * self.h

    def make(self, device="cpu", requires_grad=False, seed=0):
        gen = torch.Generator(device="cpu").manual_seed(seed)

        def rnd(*s, scale=1.0, dtype=None):
            t = (torch.randn(*s, generator=gen) * scale).to(dtype or self.dtype).to(device)
            return t.requires_grad_(requires_grad)

        return dict(x=rnd(self.b, self.l, self.h, self.p), dt=rnd(self.b, self.l, self.h, scale=0.5, dtype=torch.float32),
                    A=(-torch.rand(self.h, generator=gen) * 4 - 0.5).to(device).requires_grad_(requires_grad),
                    B=rnd(self.b, self.l, self.g, self.n), C=rnd(self.b, self.l, self.g, self.n),
                    D=rnd(self.h, dtype=torch.float32), dt_bias=rnd(self.h, scale=0.3, dtype=torch.float32))


CPU_SHAPES = [
    Shape("B4_T1024_H8_P64_N64_C64", 4, 1024, 8, 64, 64),   # DESIGN §5 CPU comparison shape
    Shape("B16_T200_H4_P16_N16_C64", 16, 200, 4, 16, 16),   # a memrl-sized batch
]
GPU_SHAPES = [
    Shape("B8_T2048_H32_P64_N128_bf16", 8, 2048, 32, 64, 128, chunk=256, dtype=torch.bfloat16),
    Shape("B64_T256_H4_P64_N64_fp32", 64, 256, 4, 64, 64, chunk=64),
]
