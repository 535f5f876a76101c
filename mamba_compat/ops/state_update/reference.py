"""Decode step in plain PyTorch: fp32 arithmetic whatever the input dtypes, `state` written in place.

Shapes (normalized by the public function): state (S, H, P, N) with S >= batch when
state_batch_indices is given, x/dt/z (b, H, P), A (H, P, N), B/C (b, G, N), D/dt_bias (H, P).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def state_update(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, state_batch_indices):
    b, h, p = x.shape
    g = B.shape[1]
    dtf = dt.float()
    if dt_bias is not None:
        dtf = dtf + dt_bias.float()
    if dt_softplus:
        dtf = F.softplus(dtf)
    if state_batch_indices is not None:
        idx = state_batch_indices.long()
        valid = idx >= 0
        rows = idx.clamp(min=0)
        s = state[rows].float()  # (b, H, P, N)
    else:
        s = state.float()
    Bh = B.float().repeat_interleave(h // g, dim=1)  # (b, H, N)
    Ch = C.float().repeat_interleave(h // g, dim=1)  # (b, H, N)
    decay = torch.exp(dtf[..., None] * A.float())  # (b, H, P, N)
    s = s * decay + (dtf * x.float())[..., None] * Bh[:, :, None, :]
    out = (s * Ch[:, :, None, :]).sum(-1)  # (b, H, P)
    if D is not None:
        out = out + x.float() * D.float()
    if z is not None:
        out = out * F.silu(z.float())
    if state_batch_indices is not None:
        valid_rows = rows[valid]
        state[valid_rows] = s[valid].to(state.dtype)
        out = out * valid[:, None, None]
    else:
        state.copy_(s)
    return out.to(x.dtype)
