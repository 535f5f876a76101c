"""Chunked SSD in plain PyTorch: the CPU default and the oracle for the kernels.

Listing 1 of the Mamba-2 paper (state-space duality), in numbered steps, generalised to groups, D,
z, dt processing, initial/final states and seq_idx resets:
  1. intra-chunk outputs (diagonal blocks): quadratic attention-like form with decay mask L
  2. chunk states: each chunk's own contribution to the state at its end
  3. inter-chunk recurrence: pass states from chunk to chunk (sequential over chunks, cheap)
  4. state -> output: the carried-in state's contribution to each position of the next chunk
Arithmetic is float32 (float64 for float64 inputs) whatever the input dtype. Segment sums
(cum_t - cum_s within a chunk) are differenced in float64, so large |dt*A| loses no precision to
cancellation. Autograd gives the backward; the registered op recomputes the
forward under torch.func.vjp (see custom_op.py).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .custom_op import make_ssd_op, vjp_backward


def process_dt(dt: torch.Tensor, dt_bias, dt_softplus: bool, dt_min: float, dt_max: float) -> torch.Tensor:
    """dt (B, L, H) in the compute dtype -> the step size actually used. The clamp is applied only when
    dt_limit differs from its default (0, inf), as upstream does. (The oracle in naive.py has its own.)"""
    if dt_bias is not None:
        dt = dt + dt_bias.to(dt.dtype)
    if dt_softplus:
        dt = F.softplus(dt)
    if (dt_min, dt_max) != (0.0, math.inf):
        dt = dt.clamp(min=dt_min, max=dt_max)
    return dt


def segment_ids(seq_idx: torch.Tensor) -> torch.Tensor:
    """(B, L) any ints -> (B, L) int64 ids that start at 0 and grow by one wherever seq_idx changes."""
    change = (seq_idx[:, 1:] != seq_idx[:, :-1]).long()
    return torch.cat([change.new_zeros(seq_idx.shape[0], 1), change.cumsum(1)], dim=1)


def ssd_chunked(x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None, initial_states=None, seq_idx=None,
                dt_softplus=False, dt_min=0.0, dt_max=math.inf):
    """x (b, l, h, p), dt (b, l, h), A (h,), B/C (b, l, g, n) -> y (b, l, h, p) in x.dtype, final (b, h, p, n)."""
    b, l, h, p = x.shape
    g, n = B.shape[2], B.shape[3]
    hg = h // g
    cdt = torch.float64 if x.dtype == torch.float64 else torch.float32
    q = min(chunk_size, l)  # the result does not depend on the chunk length; never pad past L
    nc = -(-l // q)
    pad = nc * q - l

    xf, Bf, Cf = x.to(cdt), B.to(cdt), C.to(cdt)
    dtf = process_dt(dt.to(cdt), dt_bias, dt_softplus, dt_min, dt_max)  # (b, l, h)
    seg = segment_ids(seq_idx) if seq_idx is not None else None  # (b, l)
    if pad:  # padded steps have dt = 0: no decay, no input, so the final state is the state at l-1
        xf = F.pad(xf, (0, 0, 0, 0, 0, pad))
        Bf = F.pad(Bf, (0, 0, 0, 0, 0, pad))
        Cf = F.pad(Cf, (0, 0, 0, 0, 0, pad))
        dtf = F.pad(dtf, (0, 0, 0, pad))
        if seg is not None:
            seg = torch.cat([seg, seg[:, -1:].expand(b, pad)], dim=1)

    xh = xf.view(b, nc, q, h, p).permute(0, 1, 3, 2, 4)  # (b, nc, h, q, p)
    Bg = Bf.view(b, nc, q, g, n).permute(0, 1, 3, 2, 4)  # (b, nc, g, q, n)
    Cg = Cf.view(b, nc, q, g, n).permute(0, 1, 3, 2, 4)  # (b, nc, g, q, n)
    dth = dtf.view(b, nc, q, h).permute(0, 1, 3, 2)  # (b, nc, h, q)
    dA = dth * A.to(cdt)[:, None]  # (b, nc, h, q)
    cum = dA.cumsum(dim=-1)  # decay exponent from the chunk start through t, (b, nc, h, q)

    causal = torch.ones(q, q, dtype=torch.bool, device=x.device).tril()
    mask = causal  # (q, q) or, with seq_idx, (b, nc, 1, q, q)
    if seg is not None:
        segc = seg.view(b, nc, q)
        seg_end = segc[:, :, -1]  # (b, nc)
        seg_prev_end = torch.cat([seg_end.new_zeros(b, 1), seg_end[:, :-1]], dim=1)  # segment of the carried state
        mask = (causal & (segc[:, :, :, None] == segc[:, :, None, :]))[:, :, None]
    # segment sums S[t, s] = cum_t - cum_s formed in float64: exact enough for any |dt*A| (no long-sum cancellation)
    cum64 = cum.double()
    seg_sum = (cum64[..., :, None] - cum64[..., None, :]).to(cdt)  # (b, nc, h, q, q)
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, dt, A, B, C, D, z, dt_bias, initial_states))
    if needs_grad:
        decay = torch.exp(seg_sum.masked_fill(~mask, -math.inf))  # 0 above the diagonal and across resets
    else:  # inference: the same ops in place on the one (b, nc, h, q, q) buffer
        decay = seg_sum.masked_fill_(~mask, -math.inf).exp_()
    xdt = xh * dth[..., None]  # dt_s x_s, (b, nc, h, q, p)

    # 1. intra-chunk: y[t] = sum_{s<=t} (C_t . B_s) decay[t, s] dt_s x_s
    CB = Cg @ Bg.transpose(-1, -2)  # (b, nc, g, q, q)
    decay_g = decay.view(b, nc, g, hg, q, q)
    scores = CB[:, :, :, None] * decay_g if needs_grad else decay_g.mul_(CB[:, :, :, None])  # (b, nc, g, hg, q, q)
    y = scores @ xdt.view(b, nc, g, hg, q, p)  # (b, nc, g, hg, q, p)

    # 2. chunk states: s_c = sum_s exp(cum_last - cum_s) dt_s x_s (x) B_s, over the chunk's last segment only
    to_end = torch.exp((cum64[..., -1:] - cum64).to(cdt))  # (b, nc, h, q)
    if seg is not None:
        to_end = to_end * (segc == seg_end[..., None])[:, :, None].to(cdt)
    xw = (xdt * to_end[..., None]).view(b, nc, g, hg, q, p).transpose(-1, -2).reshape(b, nc, g, hg * p, q)
    states = (xw @ Bg).view(b, nc, h, p, n)  # (b, nc, h, p, n)

    # 3. inter-chunk recurrence: s_end[c] = exp(sum_chunk dA) * keep_c * s_end[c-1] + states[c]
    chunk_decay = torch.exp(cum[..., -1])  # (b, nc, h)
    if seg is not None:
        chunk_decay = chunk_decay * (seg_end == seg_prev_end)[..., None].to(cdt)
    s = initial_states.to(cdt) if initial_states is not None else xf.new_zeros(b, h, p, n)
    carried = []
    for decay_c, state_c in zip(chunk_decay.unbind(1), states.unbind(1)):
        carried.append(s)
        s = decay_c[:, :, None, None] * s + state_c
    final = s
    s_in = torch.stack(carried, dim=1)  # state entering each chunk, (b, nc, h, p, n)

    # 4. state -> output: y[t] += exp(cum_t) C_t . s_in  (only positions still in the carried state's segment)
    decay_in = torch.exp(cum)  # (b, nc, h, q)
    if seg is not None:
        decay_in = decay_in * (segc == seg_prev_end[..., None])[:, :, None].to(cdt)
    s_cols = s_in.view(b, nc, g, hg * p, n).transpose(-1, -2)  # (b, nc, g, n, hg*p)
    y_off = (Cg @ s_cols).view(b, nc, g, q, hg, p).transpose(3, 4)  # (b, nc, g, hg, q, p)
    y = y + y_off * decay_in.view(b, nc, g, hg, q, 1)

    y = y.reshape(b, nc, h, q, p).permute(0, 1, 3, 2, 4).reshape(b, nc * q, h, p)[:, :l]  # (b, l, h, p)
    if D is not None:
        Df = D.to(cdt)
        y = y + xf[:, :l] * (Df[:, None] if Df.dim() == 1 else Df)
    if z is not None:
        y = y * F.silu(z.to(cdt))
    return y.to(x.dtype), final


_fwd_op, _bwd_op = make_ssd_op("reference", ssd_chunked, vjp_backward(ssd_chunked))


def chunk_scan(x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states, seq_idx, dt_softplus, dt_min, dt_max):
    """Eager: plain autograd through ssd_chunked (no recompute). Under torch.compile: the registered op, so the
    graph holds one node per direction. Both compute the same function (tests check both)."""
    if not torch.compiler.is_compiling():
        return ssd_chunked(x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states, seq_idx, dt_softplus, dt_min,
                           dt_max)
    return _fwd_op(x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states, seq_idx, dt_softplus, dt_min, dt_max)
