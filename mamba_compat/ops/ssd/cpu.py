"""The `cpu` SSD backend: the chunked algorithm of reference.py with a hand-written backward, laid out for
contiguous batched matmuls on the CPU (the auto choice there for every input dtype).

Same four steps as reference.py. Everything per position is held per chunk and head, (nc, b, h, q, p) (a permuted
copy of (b, L, h, p) that keeps p contiguous: cheap, unlike a transpose), B and C broadcast to the heads,
(nc, b, h, q, n), so each step is one bmm over nc*b*h contiguous matrices:
    1. intra-chunk   y += (CB o L) @ (dt x)           (q, q) @ (q, p)
    2. chunk states  (w dt x)^T @ B                    (p, q) @ (q, n)
    3. recurrence    S_{c+1} = a_c S_c + states_c      nc small elementwise steps
    4. state->output y = e (C @ S^T)                   (q, n) @ (n, p)
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


def _to_chunks(t: torch.Tensor, nc: int, q: int, dtype) -> torch.Tensor:
    """(b, l, k, m) -> (nc, b, k, q, m) in dtype, zero past l."""
    b, l, k, m = t.shape
    out = torch.empty(nc, b, k, q, m, dtype=dtype, device=t.device)
    view = out.permute(1, 0, 3, 2, 4)  # (b, nc, q, k, m) view of out
    full = l // q
    if full:
        view[:, :full].copy_(t[:, :full * q].view(b, full, q, k, m))
    if full < nc:
        view[:, full, :l - full * q].copy_(t[:, full * q:])
        view[:, full, l - full * q:].zero_()
    return out


def _from_chunks(t: torch.Tensor, l: int, out: torch.Tensor) -> torch.Tensor:
    """(nc, b, k, q, m) -> out (b, l, k, m) (written and returned); the padded tail is dropped."""
    nc, b, k, q, m = t.shape
    view = t.permute(1, 0, 3, 2, 4)  # (b, nc, q, k, m)
    full = l // q
    if full:
        out[:, :full * q].view(b, full, q, k, m).copy_(view[:, :full])
    if full < nc:
        out[:, full * q:].copy_(view[:, full, :l - full * q])
    return out


def _time_chunks(t: torch.Tensor, nc: int, q: int) -> torch.Tensor:
    """(b, l, h) -> (nc, b, h, q), zero past l."""
    b, l, h = t.shape
    if nc * q > l:
        t = F.pad(t, (0, 0, 0, nc * q - l))
    return t.view(b, nc, q, h).permute(1, 0, 3, 2).contiguous()


def _heads(t: torch.Tensor, hg: int) -> torch.Tensor:
    """(nc, b, g, q, n) -> (nc, b, g * hg, q, n): each group's B or C copied to its heads (a view when hg == 1)."""
    nc, b, g, q, n = t.shape
    return t if hg == 1 else t[:, :, :, None].expand(nc, b, g, hg, q, n).reshape(nc, b, g * hg, q, n)


def _group_sum(t: torch.Tensor, g: int) -> torch.Tensor:
    """(nc, b, h, q, n) -> (nc, b, g, q, n): summed over the heads of each group."""
    nc, b, h, q, n = t.shape
    return t if h == g else t.view(nc, b, g, h // g, q, n).sum(3)


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
    bh = nc * b * h

    dtp, dt_deriv = _process_dt(dt.to(cdt), dt_bias, dt_softplus, dt_min, dt_max)  # (b, l, h)
    dtc = _time_chunks(dtp, nc, q)  # (nc, b, h, q)
    Af = A.to(cdt)
    cum64 = (dtc * Af[:, None]).double().cumsum(-1)  # decay exponent from the chunk start through t, (nc, b, h, q)
    hi = cum64.to(cdt)

    # masks: causal within the chunk; with seq_idx only pairs, and carried states, within one segment
    causal = torch.ones(q, q, dtype=torch.bool, device=x.device).tril()  # [t, s]: s <= t
    e = _exp(cum64, cdt)  # exp(cum_t): the carried-in state's decay to position t, (nc, b, h, q)
    w = _exp(cum64[..., -1:] - cum64, cdt)  # exp(cum_last - cum_s): position s to the chunk's end state
    a = _exp(cum64[..., -1], cdt)  # the whole chunk's decay, (nc, b, h)
    mask = causal
    if seq_idx is not None:
        seg = _time_chunks(segment_ids(seq_idx)[..., None], nc, q)[:, :, 0]  # (nc, b, q)
        tail = l - (nc - 1) * q
        if tail < q:  # padded steps continue the last segment (they carry nothing: dt = 0 there)
            seg[-1, :, tail:] = seg[-1, :, tail - 1:tail]
        seg_end = seg[..., -1]  # (nc, b)
        seg_prev = torch.cat([seg_end.new_zeros(1, b), seg_end[:-1]])  # segment of the carried-in state
        mask = (causal & (seg[..., :, None] == seg[..., None, :]))[:, :, None]  # (nc, b, 1, q, q)
        e = e * (seg == seg_prev[..., None])[:, :, None].to(cdt)
        w = w * (seg == seg_end[..., None])[:, :, None].to(cdt)
        a = a * (seg_end == seg_prev)[..., None].to(cdt)

    # decay L[t, s] = exp(cum_t - cum_s) for s <= t in one segment, else 0; (nc, b, h, q, q)
    L = hi[..., :, None] - hi[..., None, :]
    if cdt == torch.float32:  # exp of -inf or of exponents under ~-87 is ~5-20x slower than of normal ones
        lo = (cum64 - hi.double()).to(cdt)
        L.add_(lo[..., :, None]).sub_(lo[..., None, :]).clamp_(min=FLUSH_BELOW - 1)
        L.masked_fill_(~mask, FLUSH_BELOW - 1).exp_()
        F.threshold_(L, math.exp(FLUSH_BELOW), 0.0)
    else:
        L.masked_fill_(~mask, -math.inf).exp_()

    xc = _to_chunks(x, nc, q, cdt)  # (nc, b, h, q, p)
    u = xc * dtc[..., None]  # dt_s x_s
    Bc, Cc = _to_chunks(B, nc, q, cdt), _to_chunks(C, nc, q, cdt)  # (nc, b, g, q, n)
    CB = torch.matmul(Cc, Bc.transpose(-1, -2)).view(nc, b, g, 1, q, q)  # C_t . B_s
    M = L.view(nc, b, g, hg, q, q).mul_(CB) if not keep else L.view(nc, b, g, hg, q, q) * CB  # scores
    Bh, Ch = _heads(Bc, hg), _heads(Cc, hg)  # (nc, b, h, q, n)

    # 2. chunk states: sum_s w_s dt_s x_s (x) B_s
    uw = u * w[..., None]
    states = torch.bmm(uw.view(bh, q, p).transpose(1, 2), Bh.reshape(bh, q, n)).view(nc, b, h, p, n)
    # 3. inter-chunk recurrence; S[c] = the state entering chunk c, S[nc] = final
    S = torch.empty(nc + 1, b, h, p, n, dtype=cdt, device=x.device)
    if initial_states is not None:
        S[0].copy_(initial_states)
    else:
        S[0].zero_()
    a4 = a[..., None, None]
    for c in range(nc):
        torch.addcmul(states[c], a4[c], S[c], out=S[c + 1])
    # 4. state -> output, then 1. the intra-chunk part accumulated onto it
    y_off = torch.bmm(Ch.reshape(bh, q, n), S[:nc].view(bh, p, n).transpose(1, 2)).view(nc, b, h, q, p)
    yc = y_off * e[..., None]
    yc.view(bh, q, p).baddbmm_(M.view(bh, q, q), u.view(bh, q, p))

    xf = x.to(cdt)
    y = _from_chunks(yc, l, torch.empty(b, l, h, p, dtype=cdt, device=x.device))
    if D is not None:
        Df = D.to(cdt)
        y.addcmul_(xf, Df[:, None] if Df.dim() == 1 else Df)
    y_pre = y
    if z is not None:
        y = y * F.silu(z.to(cdt))
    final = S[nc]
    saved = None
    if keep:
        saved = dict(shape=(b, l, h, p, g, n, q, nc), cdt=cdt, dtc=dtc, dt_deriv=dt_deriv, Af=Af, e=e, w=w, a=a,
                     L=L, M=M, xc=xc, u=u, uw=uw, Bc=Bc, Cc=Cc, Bh=Bh, Ch=Ch, S=S, y_off=y_off, y_pre=y_pre, xf=xf,
                     D=D, z=z, has_bias=dt_bias is not None, has_init=initial_states is not None)
    return y.to(x.dtype), final, saved


def _backward(sv, dy, dfinal):
    """Gradients (dx, ddt, dA, dB, dC, dD, dz, ddt_bias, dinitial_states) in the compute dtype (None where the
    input was None), from _forward's kept pieces and the incoming dy (b, l, h, p), dfinal (b, h, p, n) or None."""
    b, l, h, p, g, n, q, nc = sv["shape"]
    cdt, bh, bg = sv["cdt"], nc * b * h, nc * b * g
    dy = dy.to(cdt)
    e, w, a, S, M, L, u = sv["e"], sv["w"], sv["a"], sv["S"], sv["M"], sv["L"], sv["u"]
    Bc, Cc, Bh, Ch = sv["Bc"], sv["Cc"], sv["Bh"], sv["Ch"]
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
    dyc = _to_chunks(dy, nc, q, cdt)  # (nc, b, h, q, p)

    # 4. state -> output: y_off[t] = e_t C_t . S_c
    dye = dyc * e[..., None]
    de = (dyc * sv["y_off"]).sum(-1)  # (nc, b, h, q)
    dS = torch.bmm(dye.view(bh, q, p).transpose(1, 2), Ch.reshape(bh, q, n)).view(nc, b, h, p, n)  # direct part
    dCh = torch.bmm(dye.view(bh, q, p), S[:nc].view(bh, p, n)).view(nc, b, h, q, n)
    # 3. the recurrence backwards: G[c] = the gradient of the state entering chunk c
    G = torch.empty_like(S)
    if dfinal is not None:
        G[nc].copy_(dfinal)
    else:
        G[nc].zero_()
    a4 = a[..., None, None]
    for c in range(nc - 1, -1, -1):
        torch.addcmul(dS[c], a4[c], G[c + 1], out=G[c])
    da = (G[1:] * S[:nc]).sum((-1, -2))  # (nc, b, h)
    dstates = G[1:].reshape(bh, p, n)
    # 2. chunk states = (u w)^T B
    du = torch.bmm(Bh.reshape(bh, q, n), dstates.transpose(1, 2)).view(nc, b, h, q, p)  # d(u w)
    dBh = torch.bmm(sv["uw"].view(bh, q, p), dstates).view(nc, b, h, q, n)
    dw = (du * u).sum(-1)  # (nc, b, h, q)
    du.mul_(w[..., None])
    # 1. intra-chunk: y += M @ u
    dM = torch.bmm(dyc.view(bh, q, p), u.view(bh, q, p).transpose(1, 2)).view(nc, b, h, q, q)  # [t, s]
    du.view(bh, q, p).baddbmm_(M.view(bh, q, q).transpose(1, 2), dyc.view(bh, q, p))
    X = dM * M.view(nc, b, h, q, q)  # d(decay) * decay, [t, s]
    dCB = _group_sum(dM.mul_(L.view(nc, b, h, q, q)), g)  # (nc, b, g, q, q)
    dB = _group_sum(dBh, g)
    dB.view(bg, q, n).baddbmm_(dCB.view(bg, q, q).transpose(1, 2), Cc.view(bg, q, n))
    dC = _group_sum(dCh, g)
    dC.view(bg, q, n).baddbmm_(dCB.view(bg, q, q), Bc.view(bg, q, n))

    # decay gradient of step r: pairs s < r <= t of the intra-chunk decay, t >= r of e, s < r of w, all of a
    ddA = torch.zeros_like(e)
    if q > 1:
        below = X.cumsum(-1)  # [t, j] = sum_{s <= j} X[t, s]
        strict = torch.ones(q, q, dtype=torch.bool, device=X.device).tril(-1)  # t > j
        ddA[..., 1:] = below.masked_fill_(~strict, 0).sum(-2)[..., :-1]
    ddA += (de * e).flip(-1).cumsum(-1).flip(-1)
    ddA[..., 1:] += (dw * w).cumsum(-1)[..., :-1]
    ddA += (da * a)[..., None]

    # u = dt x, dA = dt A
    dtc = sv["dtc"]
    dxc = du * dtc[..., None]
    ddtc = (du * sv["xc"]).sum(-1) + ddA * sv["Af"][:, None]  # (nc, b, h, q)
    dA = (ddA * dtc).sum((0, 1, 3))
    ddt = ddtc.permute(1, 0, 3, 2).reshape(b, nc * q, h)[:, :l] * sv["dt_deriv"]
    dx = _from_chunks(dxc, l, torch.empty(b, l, h, p, dtype=cdt, device=dy.device))
    if sv["D"] is not None:
        Df = sv["D"].to(cdt)
        dx.addcmul_(dy, Df[:, None] if Df.dim() == 1 else Df)
    ddt_bias = ddt.sum((0, 1)) if sv["has_bias"] else None
    dinit = G[0] if sv["has_init"] else None
    Bl = torch.empty(b, l, g, n, dtype=cdt, device=dy.device)
    Cl = torch.empty(b, l, g, n, dtype=cdt, device=dy.device)
    return (dx, ddt, dA, _from_chunks(dB, l, Bl), _from_chunks(dC, l, Cl), dD, dz, ddt_bias, dinit)


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
                                   dt_min, dt_max, keep=any(ctx.needs_input_grad[:9]))
        ctx.saved = saved
        ctx.likes = [(t.dtype if t is not None else None) for t in (x, dt, A, B, C, D, z, dt_bias, initial_states)]
        return y, final

    @staticmethod
    @once_differentiable
    def backward(ctx, dy, dfinal):
        saved = ctx.saved
        if dy is None:
            b, l, h, p, *_ = saved["shape"]
            dy = torch.zeros(b, l, h, p, dtype=saved["cdt"], device=saved["S"].device)
        grads = _backward(saved, dy, dfinal)
        out = [None if gr is None or not need else gr.to(dt_)
               for gr, need, dt_ in zip(grads, ctx.needs_input_grad, ctx.likes)]
        return (*out, None, None, None, None, None)


def chunk_scan(x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states, seq_idx, dt_softplus, dt_min, dt_max):
    """Eager: _ChunkScan (the forward's pieces kept for the backward). Under torch.compile: the registered op, one
    graph node per direction (the backward recomputes the forward). Both compute the same function."""
    if not torch.compiler.is_compiling():
        return _ChunkScan.apply(x, dt, A, B, C, D, z, dt_bias, initial_states, chunk_size, seq_idx, dt_softplus,
                                dt_min, dt_max)
    return _fwd_op(x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states, seq_idx, dt_softplus, dt_min, dt_max)
