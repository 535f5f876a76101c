"""Our ops behind the five function names that transformers' Mamba-2 mixers call (transformers 5.24).

The mixers of mamba2, bamba, falcon_h1, granitemoehybrid, nemotron_h and zamba2 call module-level functions
with mamba_ssm's / causal_conv1d's arguments (HF's layouts, e.g. the conv's x is (B, C, L)); each adapter here
takes exactly those arguments and runs mamba_compat's ops (backend: set_backend / MAMBA_COMPAT_BACKEND / auto).
The mixers also forward the model's extra keyword arguments (`**kwargs`: position_ids, flash-attention
kwargs, ...); like transformers' own kernel wrapper, the adapters ignore those they have no parameter for.
Packed sequences: `seq_idx` (B, L) int, or `cu_seqlens` (S+1,) with batch 1 (turned into seq_idx), keep the
scan's state and the conv's window from crossing a sequence boundary.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from ..ops.conv1d import causal_conv1d, causal_conv1d_update, segments_from_cu_seqlens, segments_from_seq_idx
from ..ops.rmsnorm import rmsnorm_gated
from ..ops.ssd import mamba_chunk_scan_combined
from ..ops.state_update import selective_state_update

__all__ = ["chunk_scan", "state_update", "conv1d_fn", "conv1d_update", "split_conv1d_scan_combined"]

_SILU = {None: False, "silu": True, "swish": True}


def _silu(activation) -> bool:
    if activation not in _SILU:
        raise ValueError(f"activation must be None, 'silu' or 'swish' (what mamba_ssm / causal_conv1d support), "
                         f"got {activation!r}")
    return _SILU[activation]


def _packed_seq_idx(seq_idx: Optional[torch.Tensor], cu_seqlens: Optional[torch.Tensor], batch: int,
                    seqlen: int) -> Optional[torch.Tensor]:
    """seq_idx (B, L) as given, or derived from cu_seqlens (S+1,) (batch 1, boundaries 0..seqlen); both given:
    they must mark the same boundaries."""
    if cu_seqlens is None:
        return seq_idx
    if not isinstance(cu_seqlens, torch.Tensor) or cu_seqlens.dim() != 1 or cu_seqlens.dtype.is_floating_point:
        raise TypeError(f"cu_seqlens must be a 1-D integer tensor (S+1,), got {cu_seqlens!r:.80}")
    if batch != 1:
        raise ValueError(f"cu_seqlens needs batch 1 (sequences packed in one row), got batch {batch}")
    if cu_seqlens.numel() < 2 or int(cu_seqlens[0]) != 0 or int(cu_seqlens[-1]) != seqlen:
        raise ValueError(f"cu_seqlens must run from 0 to seqlen {seqlen}, got {cu_seqlens.tolist()}")
    derived = segments_from_cu_seqlens(cu_seqlens, seqlen)  # (1, L)
    if seq_idx is None:
        return derived
    if tuple(seq_idx.shape) != (1, seqlen) or not torch.equal(segments_from_seq_idx(seq_idx), derived):
        raise ValueError("seq_idx and cu_seqlens were both given and mark different sequence boundaries")
    return seq_idx


def chunk_scan(hidden_states, dt, A, B, C, chunk_size, D=None, dt_bias=None, initial_states=None, dt_softplus=False,
               dt_limit=(0.0, float("inf")), return_final_states=False, z=None, seq_idx=None, cu_seqlens=None,
               **model_kwargs):
    """HF's `mamba2_chunk_scan` (= mamba_ssm's mamba_chunk_scan_combined) on our scan.

    hidden_states: (B, L, H, P); dt: (B, L, H); A: (H,); B, C: (B, L, G, N); D: (H,) or (H, P); z: like
    hidden_states; initial_states: (B, H, P, N). Returns y (B, L, H, P), or (y, final_states (B, H, P, N) fp32).
    """
    seq_idx = _packed_seq_idx(seq_idx, cu_seqlens, hidden_states.shape[0], hidden_states.shape[1])
    y, final = mamba_chunk_scan_combined(hidden_states, dt, A, B, C, chunk_size, D=D, z=z, dt_bias=dt_bias,
                                         initial_states=initial_states, seq_idx=seq_idx, dt_softplus=dt_softplus,
                                         dt_limit=dt_limit, return_final_states=True)
    y = y.contiguous()  # mamba_ssm's y is contiguous and FalconH1Mixer .view()s it (ours may be strided)
    return (y, final) if return_final_states else y


def state_update(state, hidden_states, dt, A, B, C, D=None, dt_bias=None, dt_softplus=False, z=None,
                 state_batch_indices=None, **model_kwargs):
    """HF's `mamba2_selective_state_update` (= mamba_ssm's selective_state_update) on our decode step:
    state (B, H, P, N) updated in place; hidden_states, dt, z: (B, H, P); A: (H, P, N); B, C: (B, G, N);
    D, dt_bias: (H, P). Returns (B, H, P)."""
    return selective_state_update(state, hidden_states, dt, A, B, C, D=D, z=z, dt_bias=dt_bias,
                                  dt_softplus=dt_softplus, state_batch_indices=state_batch_indices)


def conv1d_fn(hidden_states, weight, bias=None, activation=None, seq_idx=None, cu_seqlens=None, **model_kwargs):
    """HF's `causal_conv1d_fn` (= causal_conv1d's) on our conv: hidden_states (B, C, L), weight (C, W), bias (C,)
    -> (B, C, L) (a transposed view of our (B, L, C) result). seq_idx (B, L): no window crosses a change."""
    if hidden_states.dim() != 3:
        raise ValueError(f"hidden_states must be (batch, channels, seqlen), got shape {tuple(hidden_states.shape)}")
    b, _, seqlen = hidden_states.shape
    seq_idx = _packed_seq_idx(seq_idx, cu_seqlens, b, seqlen)
    seg = None if seq_idx is None else segments_from_seq_idx(seq_idx)  # (B, L)
    x = hidden_states.transpose(1, 2)  # (B, C, L) -> (B, L, C), a view
    y = causal_conv1d(x, weight, bias, None, seg, silu=_silu(activation))  # (B, L, C)
    return y.transpose(1, 2)  # (B, C, L)


def conv1d_update(hidden_states, conv_state, weight, bias=None, activation=None, cache_seqlens=None,
                  conv_state_indices=None, **model_kwargs):
    """HF's `causal_conv1d_update` (= causal_conv1d's) on our decode conv: hidden_states (B, C) or (B, C, L)
    (L tokens, stepped one at a time), conv_state (B, C, W) shifted in place -> like hidden_states."""
    if cache_seqlens is not None or conv_state_indices is not None:
        raise NotImplementedError("causal_conv1d_update: cache_seqlens / conv_state_indices (a circular or indexed "
                                  "conv cache) are not supported by mamba_compat's conv update")
    silu = _silu(activation)
    if hidden_states.dim() == 2:
        return causal_conv1d_update(hidden_states, conv_state, weight, bias, silu=silu)
    if hidden_states.dim() != 3:
        raise ValueError(f"hidden_states must be (batch, channels) or (batch, channels, seqlen), "
                         f"got shape {tuple(hidden_states.shape)}")
    steps = [causal_conv1d_update(hidden_states[:, :, t], conv_state, weight, bias, silu=silu)  # each (B, C)
             for t in range(hidden_states.shape[2])]
    return torch.stack(steps, dim=2)  # (B, C, L)


def split_conv1d_scan_combined(zxbcdt, conv1d_weight, conv1d_bias, dt_bias, A, D, chunk_size, initial_states=None,
                               seq_idx=None, dt_limit=(0.0, float("inf")), return_final_states=False,
                               activation="silu", rmsnorm_weight=None, rmsnorm_eps=1e-6, outproj_weight=None,
                               outproj_bias=None, headdim=None, ngroups=1, norm_before_gate=True, cu_seqlens=None,
                               **model_kwargs):
    """mamba_ssm's `mamba_split_conv1d_scan_combined` composed from our ops: split, conv (+SiLU), scan, gated
    RMSNorm (groups of dim // ngroups channels, as mamba_ssm's fused kernel), out projection.

    Args:
        zxbcdt: (B, L, 2*dim + 2*ngroups*dstate + nheads), dim = nheads*headdim (no extra MLP channels)
        conv1d_weight: (dim + 2*ngroups*dstate, W); conv1d_bias: (dim + 2*ngroups*dstate,) or None
        dt_bias, A: (nheads,); D: (nheads,) (then headdim is needed) or (nheads, headdim)
        initial_states: (B, nheads, headdim, dstate) or None; seq_idx: (B, L) int or None
        rmsnorm_weight: (dim,) or None (then y *= silu(z) inside the scan)
        outproj_weight: (out_dim, dim) or None; outproj_bias: (out_dim,) or None
    Returns:
        out (B, L, out_dim or dim), or (out, final_states (B, nheads, headdim, dstate) fp32)
    """
    if D is None or D.dim() not in (1, 2):
        raise ValueError(f"D must have shape (nheads,) or (nheads, headdim), got {None if D is None else tuple(D.shape)}")
    if D.dim() == 1:
        if headdim is None:
            raise ValueError("headdim must be given when D has shape (nheads,)")
        nheads = D.shape[0]
    else:
        nheads, headdim = D.shape
    dim = nheads * headdim
    b, seqlen, width = zxbcdt.shape
    conv_dim = conv1d_weight.shape[0]
    dstate = (conv_dim - dim) // ngroups // 2
    if conv_dim != dim + 2 * ngroups * dstate or width != dim + conv_dim + nheads:
        raise ValueError(f"zxbcdt {tuple(zxbcdt.shape)} and conv1d_weight {tuple(conv1d_weight.shape)} must be "
                         f"(B, L, 2*dim + 2*ngroups*dstate + nheads) and (dim + 2*ngroups*dstate, W) with "
                         f"dim = {dim}, ngroups = {ngroups}, nheads = {nheads} (extra MLP channels not supported)")
    seq_idx = _packed_seq_idx(seq_idx, cu_seqlens, b, seqlen)
    z, xBC, dt = torch.split(zxbcdt, [dim, conv_dim, nheads], dim=-1)  # (B, L, dim), (B, L, conv_dim), (B, L, H)
    seg = None if seq_idx is None else segments_from_seq_idx(seq_idx)  # (B, L)
    xBC = causal_conv1d(xBC, conv1d_weight, conv1d_bias, None, seg, silu=_silu(activation))  # (B, L, conv_dim)
    x, B, C = torch.split(xBC, [dim, ngroups * dstate, ngroups * dstate], dim=-1)
    x = x.reshape(b, seqlen, nheads, headdim)  # (B, L, dim) -> (B, L, H, P)
    B = B.reshape(b, seqlen, ngroups, dstate)  # (B, L, G*N) -> (B, L, G, N)
    C = C.reshape(b, seqlen, ngroups, dstate)
    z4 = z.reshape(b, seqlen, nheads, headdim) if rmsnorm_weight is None else None  # (B, L, H, P)
    y, final = mamba_chunk_scan_combined(x, dt, A, B, C, chunk_size, D=D, z=z4, dt_bias=dt_bias,
                                         initial_states=initial_states, seq_idx=seq_idx, dt_softplus=True,
                                         dt_limit=dt_limit, return_final_states=True)
    y = y.reshape(b, seqlen, dim)  # (B, L, H, P) -> (B, L, dim)
    if rmsnorm_weight is not None:
        y = rmsnorm_gated(y, rmsnorm_weight, z, eps=rmsnorm_eps, group_size=dim // ngroups,
                          norm_before_gate=norm_before_gate)
    if outproj_weight is not None:
        y = F.linear(y, outproj_weight, outproj_bias)  # (B, L, out_dim)
    return (y, final) if return_final_states else y
