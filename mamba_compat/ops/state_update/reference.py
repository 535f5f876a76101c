"""Decode step in plain PyTorch: fp32 arithmetic whatever the input dtypes, `state` written in place.

Shapes (normalized by the public function): state (S, H, P, N) with S >= batch when
state_batch_indices is given, x/dt/z (b, H, P), A (H, P, N), B/C (b, G, N), D/dt_bias (H, P).
When A and dt are per-head broadcast views (stride 0 over P, N — what Mamba2 passes), the decay is
computed once per head instead of per state element.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _tied(A: torch.Tensor, dt: torch.Tensor, dt_bias) -> bool:
    return (A.stride(-1) == 0 and A.stride(-2) == 0 and dt.stride(-1) == 0
            and (dt_bias is None or dt_bias.stride(-1) == 0))


def state_update(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, state_batch_indices):
    b, h, p = x.shape
    g = B.shape[1]
    tied = _tied(A, dt, dt_bias)
    dtf = dt[..., :1].float() if tied else dt.float()  # (b, H, 1) or (b, H, P)
    if dt_bias is not None:
        dtf = dtf + (dt_bias[..., :1] if tied else dt_bias).float()
    if dt_softplus:
        dtf = F.softplus(dtf)
    Af = A[:, :1, :1].float() if tied else A.float()  # (H, 1, 1) or (H, P, N)
    decay = torch.exp(dtf[..., None] * Af)  # (b, H, 1, 1) or (b, H, P, N)
    Bh = B.float().repeat_interleave(h // g, dim=1)  # (b, H, N)
    Ch = C.float().repeat_interleave(h // g, dim=1)  # (b, H, N)
    inp = (dtf * x.float())[..., None] * Bh[:, :, None, :]  # (b, H, P, N)
    if state_batch_indices is None and state.dtype == torch.float32:
        s = state.mul_(decay).add_(inp)  # in place, no copy of the (large) state
    else:
        if state_batch_indices is not None:
            idx = state_batch_indices.long()
            valid = idx >= 0
            rows = idx.clamp(min=0)
            s = state[rows].float() * decay + inp
            state[rows[valid]] = s[valid].to(state.dtype)
        else:
            s = state.float() * decay + inp
            state.copy_(s)
    out = (s @ Ch[..., None]).squeeze(-1)  # (b, H, P)
    if D is not None:
        out = out + x.float() * D.float()
    if z is not None:
        out = out * F.silu(z.float())
    if state_batch_indices is not None:
        out = out * valid[:, None, None]
    return out.to(x.dtype)
