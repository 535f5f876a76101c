"""The oracle: the selective scan as a sequential loop over time, exactly as written in DESIGN §1.

Written for clarity, never for speed. Computes in float64 when x is float64, else float32. Fully
differentiable by autograd (no in-place ops), so it also serves as the gradient oracle.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def ssd_naive(x, dt, A, B, C, chunk_size=None, D=None, z=None, dt_bias=None, initial_states=None,
              seq_idx=None, dt_softplus=False, dt_min=0.0, dt_max=math.inf):
    """x: (B, L, H, P), dt: (B, L, H), A: (H,), B/C: (B, L, G, N) -> y (B, L, H, P) in x.dtype,
    final_states (B, H, P, N) in float32 (float64 for float64 inputs). chunk_size is ignored."""
    cdt = torch.float64 if x.dtype == torch.float64 else torch.float32
    b, seqlen, h, p = x.shape
    g, n = B.shape[2], B.shape[3]
    xf, Bf, Cf = x.to(cdt), B.to(cdt), C.to(cdt)
    clamp = (dt_min, dt_max) != (0.0, math.inf)  # upstream clamps only when dt_limit is not the default
    Af = A.to(cdt)
    Bh = Bf.repeat_interleave(h // g, dim=2)  # (B, L, H, N)
    Ch = Cf.repeat_interleave(h // g, dim=2)  # (B, L, H, N)
    s = initial_states.to(cdt) if initial_states is not None else xf.new_zeros(b, h, p, n)
    ys = []
    for t in range(seqlen):
        dt_t = dt[:, t].to(cdt)  # (B, H): this step's size, processed as DESIGN §1 writes it
        if dt_bias is not None:
            dt_t = dt_t + dt_bias.to(cdt)
        if dt_softplus:  # softplus(u) = log(1 + e^u), written out (large u: u itself, as e^u would overflow)
            dt_t = torch.where(dt_t > 30, dt_t, torch.log1p(torch.exp(torch.minimum(dt_t, dt_t.new_tensor(30.0)))))
        if clamp:
            dt_t = torch.minimum(torch.maximum(dt_t, dt_t.new_tensor(dt_min)), dt_t.new_tensor(dt_max))
        if seq_idx is not None and t > 0:
            keep = (seq_idx[:, t] == seq_idx[:, t - 1]).to(cdt)  # (B,)
            s = s * keep[:, None, None, None]
        decay = torch.exp(dt_t * Af)  # (B, H)
        inp = (dt_t[:, :, None] * xf[:, t])[..., None] * Bh[:, t, :, None, :]  # (B, H, P, N)
        s = decay[:, :, None, None] * s + inp
        y = (s * Ch[:, t, :, None, :]).sum(-1)  # (B, H, P)
        if D is not None:
            Df = D.to(cdt)
            y = y + (Df[:, None] if Df.dim() == 1 else Df) * xf[:, t]
        if z is not None:
            y = y * F.silu(z[:, t].to(cdt))
        ys.append(y)
    y = torch.stack(ys, dim=1).to(x.dtype)
    return y, s


chunk_scan = ssd_naive
