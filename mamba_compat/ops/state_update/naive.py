"""The decode step's oracle: one (batch row, head) at a time, float64 arithmetic, written as DESIGN §1 states it.

Same normalized layout and in-place contract as reference.py (state (S, H, P, N), x/dt/z (b, H, P), A (H, P, N),
B/C (b, G, N), D/dt_bias (H, P); a negative state_batch_indices entry is a pad slot: no row touched, output 0).
Written for clarity, never for speed.
"""
from __future__ import annotations

import torch


def state_update(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, state_batch_indices):
    b, h, p = x.shape
    heads_per_group = h // B.shape[1]
    out = torch.zeros(b, h, p, dtype=torch.float64, device=x.device)
    for i in range(b):
        row = i if state_batch_indices is None else int(state_batch_indices[i])
        if row < 0:
            continue
        for head in range(h):
            grp = head // heads_per_group
            step = dt[i, head].double()  # (P,)
            if dt_bias is not None:
                step = step + dt_bias[head].double()
            if dt_softplus:
                step = torch.where(step > 30, step, torch.log1p(torch.exp(step.clamp(max=30))))  # softplus
            s = state[row, head].double()  # (P, N)
            s = torch.exp(step[:, None] * A[head].double()) * s + (step * x[i, head].double())[:, None] * B[i, grp].double()
            y = s @ C[i, grp].double()  # (P,)
            if D is not None:
                y = y + D[head].double() * x[i, head].double()
            if z is not None:
                zz = z[i, head].double()
                y = y * zz / (1 + torch.exp(-zz))
            state[row, head] = s.to(state.dtype)
            out[i, head] = y
    return out.to(x.dtype)

