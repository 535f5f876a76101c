"""Decode step (`selective_state_update`) with the Metal kernel `ssd_state_update` (csrc/metal), via the
`mamba_compat._metal` extension; `state` is written in place.

Shapes (normalized by the public function): state (S, H, P, N) with S >= batch when
state_batch_indices is given, x/dt/z (b, H, P), A (H, P, N), B/C (b, G, N), D/dt_bias (H, P), possibly
broadcast views. One SIMD-group per (row, head, p): lanes stride over N, simd_sum reduces C . s. The
kernel keeps the state in fp32; a state of another dtype (or a non-contiguous one) is updated through
an fp32 copy that is written back. A negative state_batch_indices entry is a pad slot: no state row is
touched and its output is zero.
"""
from __future__ import annotations

import torch

from ..ssd.metal import _ext

__all__ = ["state_update"]


def _f32(t):
    return None if t is None else t.to(torch.float32).contiguous()


def state_update(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, state_batch_indices):
    ext = _ext()
    direct = state.dtype == torch.float32 and state.is_contiguous()
    work = state if direct else state.to(torch.float32).contiguous()
    idx = None if state_batch_indices is None else state_batch_indices.to(torch.int32).contiguous()
    out = ext.state_update(work, _f32(x), _f32(dt), _f32(A), _f32(B), _f32(C), _f32(D), _f32(z), _f32(dt_bias), idx,
                           bool(dt_softplus))
    if not direct:
        state.copy_(work)
    return out.to(x.dtype)
