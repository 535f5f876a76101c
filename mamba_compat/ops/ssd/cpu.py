"""The `cpu` SSD backend: the chunked algorithm of reference.py with a hand-written backward, laid out for
contiguous batched matmuls on the CPU (the auto choice there for every input dtype).

Same four steps as reference.py, each one bmm over the b*nc chunks. Two layouts of the per-position tensors:
    natural (b*nc, q, h*p): x's own layout (no copy without padding); the heads of a group are adjacent columns, so
        the steps where they share B or C are one matmul for the whole group:
        2. chunk states  B^T @ (w dt x)              (n, q) @ (q, hg*p)
        4. state->output C @ S                       (q, n) @ (n, hg*p), times exp(cum_t) per head
    per head (b*nc, h, q, p): a permuted copy (cheap: p stays contiguous), for the one step whose matrix is per head:
        1. intra-chunk   (C B^T o L) @ (dt x)        (q, q) @ (q, p)
    3. recurrence        S_{c+1} = exp(sum_c dt A) S_c + states_c, nc small elementwise steps.
The backward is written out (no autograd graph of small ops): its matmuls are these transposed, every gradient is
formed from the forward's kept pieces, and the decay gradient of step r is summed directly over the pairs
s < r <= t it sits between (a cumsum along s, then a masked sum over t), so nothing cancels (as the Triton backward).

Precision: the within-chunk cumsum of dt*A is taken in float64 and split into float32 high and low parts; segment
sums are (hi_t - hi_s) + (lo_t - lo_s), so large |dt*A| loses nothing and no (b, h, nc, q, q) float64 tensor is
formed. In float32, decay factors below exp(-60) (< 1e-26) are flushed to zero: exp into the subnormal range, and
every op after it on subnormals, runs ~10x slower on x86. The kernel chooses its chunk length, ceil(L / ceil(L /
chunk_size)) (L = 200 with chunk 64: 4 chunks of 50, not 4 of 64 with 56 padded); the result does not depend on it.
Arithmetic is float32 for float32/float16/bfloat16 inputs and float64 for float64 inputs.

    chunk_scan(x (B, L, H, P), dt (B, L, H), A (H,), B/C (B, L, G, N), chunk_size, D (H,)|(H, P), z like x,
               dt_bias (H,), initial_states (B, H, P, N), seq_idx (B, L), dt_softplus, dt_min, dt_max)
        -> (y (B, L, H, P) in x.dtype, final_states (B, H, P, N) float32; float64 for float64 inputs)
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from .custom_op import make_ssd_op
from .reference import segment_ids

__all__ = ["chunk_scan", "ssd_fwd", "ssd_bwd"]

FLUSH_BELOW = -60.0
"""float32: a decay exponent below this gives a factor of exactly 0 (exp(-60) = 8.8e-27, far under float32's
resolution of any sum it enters; keeps every product out of the slow subnormal range)."""


def _chunk_len(l: int, chunk_size: int) -> tuple[int, int]:
    """(q, nc): as many chunks as chunk_size gives, of equal length (the last one padded by fewer than nc steps)."""
    nc = -(-l // min(chunk_size, l))
    return -(-l // nc), nc


def _pad(t: torch.Tensor, length: int, dtype) -> torch.Tensor:
    """(b, l, ...) -> (b, length, ...) in dtype, zero past l (t itself when nothing changes)."""
    t = t.to(dtype)
    if t.shape[1] == length:
        return t
    out = t.new_zeros((t.shape[0], length) + tuple(t.shape[2:]))
    out[:, :t.shape[1]] = t
    return out


def _group_cols(h: int, g: int, p: int):
    """The column slice of each group's heads in a (..., h*p) matrix."""
    hg = h // g
    return [slice(i * hg * p, (i + 1) * hg * p) for i in range(g)]


def _process_dt(dt, dt_bias, dt_softplus, dt_min, dt_max):
    """-> (processed dt, its derivative w.r.t. the raw dt); as reference.process_dt (clamp only when not the
    default limit; the clamp passes the gradient where min <= value <= max, as torch's clamp does)."""
    u = dt + dt_bias.to(dt.dtype) if dt_bias is not None else dt
    if dt_softplus:
        out, deriv = F.softplus(u), torch.sigmoid(u)
    else:
        out, deriv = u, torch.ones_like(u)
    if (dt_min, dt_max) != (0.0, math.inf):
        deriv = deriv * ((out >= dt_min) & (out <= dt_max)).to(u.dtype)
        out = out.clamp(min=dt_min, max=dt_max)
    return out, deriv


def _exp(t: torch.Tensor, cdt) -> torch.Tensor:
    """exp of a float64 exponent, in cdt; float32: exponents below FLUSH_BELOW give 0."""
    if cdt == torch.float32:
        t = F.threshold(t, FLUSH_BELOW, -math.inf)
    return t.exp().to(cdt)


def _forward(x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states, seq_idx, dt_softplus, dt_min, dt_max,
             keep: bool):
    """-> (y (b, l, h, p) in x.dtype, final (b, h, p, n), the pieces _backward needs or None)."""
    b, l, h, p = x.shape
    g, n = B.shape[2], B.shape[3]
    hg = h // g
    cdt = torch.float64 if x.dtype == torch.float64 else torch.float32
    q, nc = _chunk_len(l, chunk_size)
    bn, T, hp = b * nc, nc * q, h * p
    cols = _group_cols(h, g, p)

    dtp, dt_deriv = _process_dt(dt.to(cdt), dt_bias, dt_softplus, dt_min, dt_max)  # (b, l, h)
    dtN = _pad(dtp, T, cdt).view(bn, q, h)  # padded steps: dt = 0, no decay and no input
    dtH = dtN.transpose(1, 2).contiguous()  # (bn, h, q)
    Af = A.to(cdt)
    cum64 = (dtH * Af[:, None]).double().cumsum(-1)  # decay exponent from the chunk start through t, (bn, h, q)
    hi = cum64.to(cdt)

    # masks: causal within the chunk; with seq_idx only pairs, and carried states, within one segment
    causal = torch.ones(q, q, dtype=torch.bool, device=x.device).tril()  # [t, s]: s <= t
    eH = _exp(cum64, cdt)  # exp(cum_t): the carried-in state's decay to position t, (bn, h, q)
    wH = _exp(cum64[..., -1:] - cum64, cdt)  # exp(cum_last - cum_s): position s to the chunk's end state
    a = _exp(cum64[..., -1], cdt)  # the whole chunk's decay, (bn, h)
    mask = causal
    if seq_idx is not None:
        ids = segment_ids(seq_idx)  # (b, l)
        if T > l:  # padded steps continue the last segment
            ids = torch.cat([ids, ids[:, -1:].expand(b, T - l)], dim=1)
        seg = ids.view(bn, q)
        seg_end = ids.view(b, nc, q)[..., -1]  # (b, nc)
        seg_prev = torch.cat([seg_end.new_zeros(b, 1), seg_end[:, :-1]], dim=1)  # segment of the carried-in state
        mask = (causal & (seg[:, :, None] == seg[:, None, :]))[:, None]  # (bn, 1, q, q)
        eH = eH * (seg == seg_prev.reshape(bn, 1))[:, None].to(cdt)
        wH = wH * (seg == seg_end.reshape(bn, 1))[:, None].to(cdt)
        a = a * (seg_end == seg_prev).reshape(bn, 1).to(cdt)
    eN, wN = eH.transpose(1, 2).contiguous(), wH.transpose(1, 2).contiguous()  # (bn, q, h)

    # decay L[t, s] = exp(cum_t - cum_s) for s <= t in one segment, else 0; (bn, h, q, q)
    L = hi[..., :, None] - hi[..., None, :]
    if cdt == torch.float32:  # exp of -inf or of exponents under ~-87 is ~5-20x slower than of normal ones
        lo = (cum64 - hi.double()).to(cdt)
        L.add_(lo[..., :, None]).sub_(lo[..., None, :]).clamp_(min=FLUSH_BELOW - 1)
        L.masked_fill_(~mask, FLUSH_BELOW - 1).exp_()
        F.threshold_(L, math.exp(FLUSH_BELOW), 0.0)
    else:
        L.masked_fill_(~mask, -math.inf).exp_()

    XN = _pad(x, T, cdt).view(bn, q, h, p)
    UN = XN * dtN[..., None]  # dt_s x_s, natural layout
    UH = UN.transpose(1, 2).contiguous()  # (bn, h, q, p)
    Bg = _pad(B, T, cdt).view(bn, q, g, n).transpose(1, 2).contiguous()  # (bn, g, q, n)
    Cg = _pad(C, T, cdt).view(bn, q, g, n).transpose(1, 2).contiguous()
    CB = torch.matmul(Cg, Bg.transpose(-1, -2))  # C_t . B_s, (bn, g, q, q)
    M = L.view(bn, g, hg, q, q) * CB[:, :, None] if keep else L.view(bn, g, hg, q, q).mul_(CB[:, :, None])
    M = M.view(bn, h, q, q)

    # 2. chunk states: sum_s w_s dt_s x_s (x) B_s, stored transposed (n, h*p) per chunk
    UW = (UN * wN[..., None]).view(bn, q, hp)
    states = _group_mm([Bg[:, i].transpose(1, 2) for i in range(g)], [UW[:, :, c] for c in cols], (bn, n, hp), cols)
    states = states.view(b, nc, n, h, p)
    del UW  # _backward recomputes it
    if not keep:  # inference: drop each large temporary once used (peak memory)
        del UN
    # 3. inter-chunk recurrence: S_in[:, c] = the state entering chunk c, (b, nc, n, h, p)
    a5 = a.view(b, nc, 1, h, 1)
    S_in = torch.empty(b, nc, n, h, p, dtype=cdt, device=x.device)
    if initial_states is not None:
        S_in[:, 0].copy_(initial_states.permute(0, 3, 1, 2))
    else:
        S_in[:, 0].zero_()
    for c in range(nc - 1):
        torch.addcmul(states[:, c], a5[:, c], S_in[:, c], out=S_in[:, c + 1])
    final = torch.addcmul(states[:, -1], a5[:, -1], S_in[:, -1]).permute(0, 2, 3, 1).contiguous()  # (b, h, p, n)
    # 4. state -> output, then 1. the intra-chunk part added
    Sm = S_in.view(bn, n, hp)
    Yoff = _group_mm([Cg[:, i] for i in range(g)], [Sm[:, :, c] for c in cols], (bn, q, hp), cols)
    Y = Yoff.view(bn, q, h, p).mul_(eN[..., None]) if not keep else Yoff.view(bn, q, h, p) * eN[..., None]
    Yd = torch.matmul(M, UH)
    if not keep:
        del L, M, UH, CB
    Y.add_(Yd.transpose(1, 2))
    del Yd

    xf = x.to(cdt)
    y = Y.view(b, T, h, p)[:, :l]
    if D is not None:
        Df = D.to(cdt)
        y = torch.addcmul(y, xf, Df[:, None] if Df.dim() == 1 else Df)
    y_pre = y
    if z is not None:
        y = y * F.silu(z.to(cdt))
    saved = None
    if keep:
        saved = dict(shape=(b, l, h, p, g, n, q, nc), cdt=cdt, dtN=dtN, dtH=dtH, dt_deriv=dt_deriv, Af=Af, eN=eN,
                     eH=eH, wN=wN, wH=wH, a=a, L=L, M=M, XN=XN, UN=UN, UH=UH, Bg=Bg, Cg=Cg, S_in=S_in,
                     Yoff=Yoff, xf=xf,
                     D=D, z=z, has_bias=dt_bias is not None,
                     y_pre=y_pre if z is not None else None,  # without z it is the output: no cycle via ctx
                     has_init=initial_states is not None)
    return y.to(x.dtype), final, saved


def _group_mm(lhs, rhs, shape, cols):
    """One bmm per group: lhs[i] @ rhs[i] into the group's column slice of a new `shape` tensor (one plain bmm
    when there is one group)."""
    if len(cols) == 1:
        return torch.bmm(lhs[0], rhs[0])
    out = lhs[0].new_empty(shape)
    for lh, rh, c in zip(lhs, rhs, cols):
        out[:, :, c] = torch.bmm(lh, rh)
    return out


def _backward(sv, dy, dfinal):
    """Gradients (dx, ddt, dA, dB, dC, dD, dz, ddt_bias, dinitial_states) in the compute dtype (None where the
    input was None), from _forward's kept pieces and the incoming dy (b, l, h, p), dfinal (b, h, p, n) or None."""
    b, l, h, p, g, n, q, nc = sv["shape"]
    cdt, hg = sv["cdt"], h // g
    bn, T, hp = b * nc, nc * q, h * p
    cols = _group_cols(h, g, p)
    eN, eH, wN, wH, a, M, L = sv["eN"], sv["eH"], sv["wN"], sv["wH"], sv["a"], sv["M"], sv["L"]
    UN, UH, Bg, Cg, S_in = sv["UN"], sv["UH"], sv["Bg"], sv["Cg"], sv["S_in"]
    dy = dy.to(cdt)
    dz = None
    if sv["z"] is not None:  # y = y_pre * silu(z)
        zf = sv["z"].to(cdt)
        sig = torch.sigmoid(zf)
        dz = dy * sv["y_pre"] * sig * (1 + zf * (1 - sig))
        dy = dy * (zf * sig)
    dD = None
    if sv["D"] is not None:
        dD = (dy * sv["xf"]).sum((0, 1))  # (h, p)
        if sv["D"].dim() == 1:
            dD = dD.sum(-1)
    dYN = _pad(dy, T, cdt).view(bn, q, h, p)

    # 4. state -> output: y_off[t] = e_t C_t . S_c
    dye = (dYN * eN[..., None]).view(bn, q, hp)
    deN = (dYN * sv["Yoff"].view(bn, q, h, p)).sum(-1)  # (bn, q, h)
    Sm = S_in.view(bn, n, hp)
    dS = _group_mm([Cg[:, i].transpose(1, 2) for i in range(g)], [dye[:, :, c] for c in cols], (bn, n, hp), cols)
    dC = torch.stack([torch.bmm(dye[:, :, c], Sm[:, :, c].transpose(1, 2)) for c in cols], 1)  # (bn, g, q, n)
    # 3. the recurrence backwards: dst[:, c] = the gradient of the state at the end of chunk c
    dS5 = dS.view(b, nc, n, h, p)
    a5 = a.view(b, nc, 1, h, 1)
    dst = torch.empty(b, nc, n, h, p, dtype=cdt, device=dy.device)
    if dfinal is not None:
        dst[:, -1].copy_(dfinal.permute(0, 3, 1, 2))
    else:
        dst[:, -1].zero_()
    for c in range(nc - 1, 0, -1):
        torch.addcmul(dS5[:, c], a5[:, c], dst[:, c], out=dst[:, c - 1])
    dinit = None
    if sv["has_init"]:
        dinit = torch.addcmul(dS5[:, 0], a5[:, 0], dst[:, 0]).permute(0, 2, 3, 1)  # (b, h, p, n)
    da = (dst * S_in).sum((2, 4)).view(bn, h)
    dstm = dst.view(bn, n, hp)
    # 2. chunk states = B^T (u w)
    du = _group_mm([Bg[:, i] for i in range(g)], [dstm[:, :, c] for c in cols], (bn, q, hp), cols).view(bn, q, h, p)
    UW = (UN * wN[..., None]).view(bn, q, hp)  # recomputed, not kept (one pass, an x-sized tensor less to hold)
    dB = torch.stack([torch.bmm(UW[:, :, c], dstm[:, :, c].transpose(1, 2)) for c in cols], 1)  # (bn, g, q, n)
    dwN = (du * UN).sum(-1)  # (bn, q, h)
    du.mul_(wN[..., None])
    # 1. intra-chunk: y += M @ u, per head
    dYH = dYN.transpose(1, 2).contiguous()  # (bn, h, q, p)
    dM = torch.matmul(dYH, UH.transpose(-1, -2))  # [t, s]
    du.add_(torch.matmul(M.transpose(-1, -2), dYH).transpose(1, 2))
    scratch = dM * L  # (the backward allocates as little as it can: each fresh 8 MB page-faults ~2k times)
    dCB = scratch.view(bn, g, hg, q, q).sum(2)  # (bn, g, q, q)
    X = dM.mul_(M)  # d(decay) * decay, [t, s]
    dB += torch.matmul(dCB.transpose(-1, -2), Cg)
    dC += torch.matmul(dCB, Bg)

    # decay gradient of step r: pairs s < r <= t of the intra-chunk decay, t >= r of e, s < r of w, all of a
    ddA = torch.zeros_like(eH)  # (bn, h, q)
    if q > 1:  # the cumsum along s as one (bn*h*q, q) @ (q, q) matmul (a cumsum over rows runs ~2x slower here)
        upto = torch.ones(q, q, dtype=cdt, device=X.device).triu()  # [s, j] = s <= j
        below = torch.matmul(X, upto, out=scratch)  # [t, j] = sum_{s <= j} X[t, s]
        strict = torch.ones(q, q, dtype=torch.bool, device=X.device).tril(-1)  # t > j
        ddA[..., 1:] = below.masked_fill_(~strict, 0).sum(-2)[..., :-1]
    ddA += (deN.transpose(1, 2) * eH).flip(-1).cumsum(-1).flip(-1)
    ddA[..., 1:] += (dwN.transpose(1, 2) * wH).cumsum(-1)[..., :-1]
    ddA += (da * a)[..., None]

    # u = dt x, dA = dt A
    dtN = sv["dtN"]
    ddtN = (du * sv["XN"]).sum(-1) + (ddA * sv["Af"][:, None]).transpose(1, 2)  # (bn, q, h)
    dxN = du.mul_(dtN[..., None])
    dA = (ddA * sv["dtH"]).sum((0, 2))
    ddt = ddtN.reshape(b, T, h)[:, :l] * sv["dt_deriv"]
    dx = dxN.view(b, T, h, p)[:, :l]
    if sv["D"] is not None:
        Df = sv["D"].to(cdt)
        dx = torch.addcmul(dx, dy, Df[:, None] if Df.dim() == 1 else Df)
    ddt_bias = ddt.sum((0, 1)) if sv["has_bias"] else None

    def to_bl(t):  # (bn, g, q, n) -> (b, l, g, n)
        return t.transpose(1, 2).reshape(b, T, g, n)[:, :l]

    return (dx, ddt, dA, to_bl(dB), to_bl(dC), dD, dz, ddt_bias, dinit)


def ssd_fwd(x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states, seq_idx, dt_softplus, dt_min, dt_max):
    y, final, _ = _forward(x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states, seq_idx, dt_softplus, dt_min,
                           dt_max, keep=False)
    return y, final


def ssd_bwd(dy, dfinal, x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states, seq_idx, dt_softplus, dt_min,
            dt_max):
    """The registered backward: the forward recomputed (the op saves only its inputs), then _backward."""
    _, _, saved = _forward(x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states, seq_idx, dt_softplus, dt_min,
                           dt_max, keep=True)
    return _backward(saved, dy, dfinal)


_fwd_op, _bwd_op = make_ssd_op("cpu", ssd_fwd, ssd_bwd)
_INPUTS = ("x", "dt", "A", "B", "C", "D", "z", "dt_bias", "initial_states")


class _ChunkScan(torch.autograd.Function):
    """Eager autograd: the forward keeps its pieces for the backward (no recompute). Once differentiable: a second
    derivative raises (backend='reference' differentiates twice)."""

    @staticmethod
    def forward(ctx, x, dt, A, B, C, D, z, dt_bias, initial_states, chunk_size, seq_idx, dt_softplus, dt_min,
                dt_max):
        y, final, saved = _forward(x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states, seq_idx, dt_softplus,
                                   dt_min, dt_max, keep=True)
        ctx.saved = saved
        ctx.likes = [(t.dtype if t is not None else None) for t in (x, dt, A, B, C, D, z, dt_bias, initial_states)]
        return y, final

    @staticmethod
    @once_differentiable
    def backward(ctx, dy, dfinal):
        saved = ctx.saved
        if dy is None:
            b, l, h, p, *_ = saved["shape"]
            dy = torch.zeros(b, l, h, p, dtype=saved["cdt"], device=saved["L"].device)
        grads = _backward(saved, dy, dfinal)
        out = [None if gr is None or not need else gr.to(dt_)
               for gr, need, dt_ in zip(grads, ctx.needs_input_grad, ctx.likes)]
        return (*out, None, None, None, None, None)


def chunk_scan(x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states, seq_idx, dt_softplus, dt_min, dt_max):
    """Eager: _ChunkScan (the forward's pieces kept for the backward). Under torch.compile: the registered op, one
    graph node per direction (the backward recomputes the forward). Both compute the same function."""
    if not torch.compiler.is_compiling():
        if not torch.is_grad_enabled() or not any(t is not None and t.requires_grad for t in
                                                  (x, dt, A, B, C, D, z, dt_bias, initial_states)):
            return ssd_fwd(x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states, seq_idx, dt_softplus, dt_min,
                           dt_max)  # inference: nothing kept, buffers reused in place
        return _ChunkScan.apply(x, dt, A, B, C, D, z, dt_bias, initial_states, chunk_size, seq_idx, dt_softplus,
                                dt_min, dt_max)
    return _fwd_op(x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states, seq_idx, dt_softplus, dt_min, dt_max)
