"""Causal depthwise conv1d of Mamba-2 with a carried window and segment (reset) masking, in plain PyTorch.

Layouts follow mamba_ssm: activations x are (B, L, C); the conv window `conv_state` is (B, C, W) with
W = d_conv and its last column the most recent input (what `Mamba2.step` keeps). Segments: `seg`
(B, L) holds non-decreasing segment ids, and the inputs held in `conv_state` count as segment 0. The
output at t only sees inputs of its own segment, so nothing mixes across a sequence boundary or reset.
Arithmetic is fp32 (fp64 for fp64 inputs) whatever the input dtype. These functions are the CPU default
and the oracle of the Triton kernels (triton.py); autograd differentiates them.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F


def segments_from_seq_idx(seq_idx: torch.Tensor) -> torch.Tensor:
    """seq_idx (B, L) int -> segment ids (B, L) int64 that start at 0 and grow by one wherever seq_idx
    changes between t-1 and t (only changes matter, not the values)."""
    change = (seq_idx[:, 1:] != seq_idx[:, :-1]).long()  # (B, L-1)
    return F.pad(change.cumsum(1), (1, 0))  # (B, L)


def segments_from_reset(reset: torch.Tensor) -> torch.Tensor:
    """reset (B, L) bool, True where the state is cleared before token t -> segment ids (B, L) int64;
    a reset at t = 0 puts token 0 in segment 1, apart from the carried window (segment 0)."""
    return reset.long().cumsum(1)


def segments_from_cu_seqlens(cu_seqlens: torch.Tensor, seqlen: int) -> torch.Tensor:
    """cu_seqlens (S+1,) int, boundaries of S packed sequences -> seq_idx (1, seqlen) int64."""
    pos = torch.arange(seqlen, device=cu_seqlens.device)
    return (torch.searchsorted(cu_seqlens[1:-1].long().contiguous(), pos, right=True)).unsqueeze(0)


def causal_conv1d(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                  conv_state: Optional[torch.Tensor] = None, seg: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Depthwise causal conv, no activation.

    x: (B, L, C); weight: (C, W); bias: (C,) or None; conv_state: (B, C, W) inputs before x (only its
    last W-1 columns are used) or None for zeros; seg: (B, L) segment ids or None (one segment, which
    also covers conv_state). Returns (B, L, C) in x.dtype:
        y[b, t, c] = bias[c] + sum_j weight[c, W-1-j] * x[b, t-j, c] * [seg[b, t-j] == seg[b, t]]
    """
    b, seqlen, c = x.shape
    w = weight.shape[1]
    if conv_state is None:
        prefix = x.new_zeros(b, w - 1, c)
    else:
        prefix = conv_state[:, :, 1:].transpose(1, 2).to(x.dtype)  # (B, W-1, C)
    xp = torch.cat([prefix, x], dim=1)  # (B, W-1+L, C)
    segp = None if seg is None else F.pad(seg, (w - 1, 0))  # (B, W-1+L), the window is segment 0
    cdt = torch.promote_types(x.dtype, torch.float32)  # compute dtype
    wf = weight.to(cdt)
    acc = x.to(cdt) * wf[:, w - 1]  # (B, L, C): the current input, always in its own segment
    if bias is not None:
        acc.add_(bias.to(cdt))
    for k in range(w - 1):  # tap k sees the input W-1-k steps back
        tap = xp[:, k:k + seqlen].to(cdt)  # (B, L, C)
        if segp is not None:
            tap = tap * (segp[:, k:k + seqlen] == seg).unsqueeze(-1).to(cdt)
        acc.addcmul_(tap, wf[:, k])
    return acc.to(x.dtype)


def conv_state_after(x: torch.Tensor, conv_state: Optional[torch.Tensor], width: int,
                     seg: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The window after the last token: x (B, L, C), conv_state (B, C, W) or None, seg (B, L) or None ->
    (B, C, W) in x.dtype, a new tensor (a transposed view of a (B, W, C) tensor, the layout upstream
    allocates), with inputs from before the last segment's start zeroed."""
    b, seqlen, c = x.shape
    if seqlen >= width:
        tail = x[:, seqlen - width:]  # (B, W, C)
        if seg is None:  # a fresh tensor, never a view of x: callers may edit the window in place
            tail = tail.clone(memory_format=torch.contiguous_format)
    else:
        prev = x.new_zeros(b, width, c) if conv_state is None else conv_state.transpose(1, 2).to(x.dtype)
        tail = torch.cat([prev, x], dim=1)[:, -width:]  # (B, W, C)
    if seg is not None:
        seg_tail = F.pad(seg, (width, 0))[:, -width:]  # (B, W), the carried window is segment 0
        tail = tail * (seg_tail == seg[:, -1:]).unsqueeze(-1).to(x.dtype)
    return tail.transpose(1, 2)


def conv_step(x: torch.Tensor, conv_state: torch.Tensor, weight: torch.Tensor,
              bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """One decode step: shift x (B, C) into conv_state (B, C, W) in place, return the conv output (B, C)
    in x.dtype (no activation)."""
    conv_state.copy_(torch.cat([conv_state[:, :, 1:], x.unsqueeze(-1).to(conv_state.dtype)], dim=-1))
    cdt = torch.promote_types(x.dtype, torch.float32)
    out = (conv_state.to(cdt) * weight.to(cdt)).sum(-1)  # (B, C)
    if bias is not None:
        out = out + bias.to(cdt)
    return out.to(x.dtype)
