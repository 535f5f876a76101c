"""Triton backward of the SSD scan: one reverse sweep per (batch, head) after a forward state pass.

Pass 1 is triton_fwd.ssd_fwd_kernel with STORE_STATES: the state entering each chunk, S_prev.
Pass 2 (this kernel) walks the chunks backwards carrying dS = dLoss/d(state leaving the chunk) in fp32
registers (seeded by the gradient on final_states) and, per chunk, with c the chunk-local cumsum of
a = dt*A, Lm_ij = exp(c_i - c_j) [j <= i, same segment], dyz = dy * silu(z):

    dx_raw = (CB * Lm)^T @ dyz + w' * (B @ dS^T)              w'_j = exp(c_last - c_j) [r_j == r_last]
    dx     = dt * dx_raw + D * dyz,        ddt_direct = rowsum(x * dx_raw)
    dC     = (dyz x^T * Lm * dt_j) @ B + exp(c) [r == 0] * (dyz @ S_prev)
    dB     = dt * ((dyz x^T * Lm)^T @ C) + w' dt * (x @ dS)
    dc_i   = rowsum(M) - colsum(M) + <dyz_i, carried-state output_i> - w'_i dt_i x_i dS B_i
             + [i = last] <dS, S_next>                      M = dyz x^T * CB * Lm * dt_j
    da     = reverse cumsum of dc,  ddt = ddt_direct + A da,  dA += sum(dt * da)
    dS    <- exp(c_last) [no reset] * dS + (dyz * exp(c) [r == 0])^T @ C

dB and dC are written per head (fp32) and summed over the heads of a group by the launcher; dA and D's
gradient are written per (batch, head) and summed likewise. dz recomputes the pre-gate output.
"""
from __future__ import annotations

import triton
import triton.language as tl

from .triton_common import autotune_configs, mm
from .triton_fwd import chunk_resets, process_dt


@triton.autotune(configs=autotune_configs(bwd=True), key=["P", "N", "Q", "HAS_Z"])
@triton.jit
def ssd_bwd_kernel(
    x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, dtb_ptr, seq_ptr, dy_ptr, dfinal_ptr, states_ptr,
    dx_ptr, ddt_ptr, dB_ptr, dC_ptr, dz_ptr, dinit_ptr, dA_ptr, dD_ptr,
    L, H, P, N, HPG, dt_min, dt_max,
    sxb, sxl, sxh, sxp,
    sdb, sdl, sdh,
    sBb, sBl, sBg, sBn,
    sCb, sCl, sCg, sCn,
    szb, szl, szh, szp,
    syb, syl, syh, syp,
    ssb, ssl,
    sDh, sDp,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_DTB: tl.constexpr, HAS_DFINAL: tl.constexpr,
    HAS_SEQ: tl.constexpr, SOFTPLUS: tl.constexpr, CLAMP: tl.constexpr,
    Q: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr, DOT_PREC: tl.constexpr, UPCAST: tl.constexpr,
):
    pid_bh = tl.program_id(0).to(tl.int64)
    b = pid_bh // H
    h = pid_bh % H
    g = h // HPG
    offs_q = tl.arange(0, Q)
    offs_p = tl.arange(0, BP)
    offs_n = tl.arange(0, BN)
    pmask = offs_p < P
    nmask = offs_n < N
    pn_mask = pmask[:, None] & nmask[None, :]
    pn_offs = offs_p[:, None] * N + offs_n[None, :]

    A = tl.load(A_ptr + h).to(tl.float32)
    dtb = 0.0
    if HAS_DTB:
        dtb = tl.load(dtb_ptr + h).to(tl.float32)
    x_row = x_ptr + b * sxb + h * sxh
    dt_row = dt_ptr + b * sdb + h * sdh
    B_row = B_ptr + b * sBb + g * sBg
    C_row = C_ptr + b * sCb + g * sCg
    z_row = z_ptr + b * szb + h * szh
    dy_row = dy_ptr + b * syb + h * syh
    seq_row = seq_ptr + b * ssb
    # outputs are contiguous: dx/dz (B, L, H, P), ddt (B, L, H), dB/dC per head (B, L, H, N)
    dx_row = dx_ptr + (b * L * H + h) * P
    dz_row = dz_ptr + (b * L * H + h) * P
    ddt_row = ddt_ptr + b * L * H + h
    dB_row = dB_ptr + (b * L * H + h) * N
    dC_row = dC_ptr + (b * L * H + h) * N
    if HAS_D:
        Dv = tl.load(D_ptr + h * sDh + offs_p * sDp, mask=pmask, other=0.0).to(tl.float32)  # (BP,)

    nchunks = tl.cdiv(L, Q)
    st_base = states_ptr + pid_bh * (nchunks + 1) * P * N
    if HAS_DFINAL:
        dS = tl.load(dfinal_ptr + pid_bh * P * N + pn_offs, mask=pn_mask, other=0.0).to(tl.float32)
    else:
        dS = tl.zeros([BP, BN], dtype=tl.float32)
    S_next = tl.load(st_base + nchunks * P * N + pn_offs, mask=pn_mask, other=0.0)
    dA_acc = tl.sum(tl.zeros([Q], dtype=tl.float32), 0)  # fp32 scalar
    dD_acc = tl.zeros([BP], dtype=tl.float32)
    for k in range(0, nchunks):
        ci = nchunks - 1 - k
        S_prev = tl.load(st_base + ci * P * N + pn_offs, mask=pn_mask, other=0.0)  # (BP, BN) fp32
        t = ci * Q + offs_q
        tmask = t < L
        t = t.to(tl.int64)
        qp_mask = tmask[:, None] & pmask[None, :]
        qn_mask = tmask[:, None] & nmask[None, :]
        raw = tl.load(dt_row + t * sdl, mask=tmask, other=0.0).to(tl.float32)
        dt, dfac = process_dt(raw, dtb, dt_min, dt_max, SOFTPLUS, CLAMP)
        dt = tl.where(tmask, dt, 0.0)
        # chunk-local cumsum, differenced in fp64: no cancellation when |dt*A| is large
        cum64 = tl.cumsum((dt * A).to(tl.float64), 0)  # (Q,)
        last64 = tl.sum(tl.where(offs_q == Q - 1, cum64, 0.0), 0)
        cum = cum64.to(tl.float32)
        to_last = (last64 - cum64).to(tl.float32)  # (Q,) decay exponent from each step to the chunk end
        last = last64.to(tl.float32)
        r = chunk_resets(seq_row, t, tmask, ssl, Q, HAS_SEQ)
        r_last = tl.max(r, 0)

        x = tl.load(x_row + t[:, None] * sxl + offs_p[None, :] * sxp, mask=qp_mask, other=0.0)  # (Q, BP)
        Bm = tl.load(B_row + t[:, None] * sBl + offs_n[None, :] * sBn, mask=qn_mask, other=0.0)  # (Q, BN)
        Cm = tl.load(C_row + t[:, None] * sCl + offs_n[None, :] * sCn, mask=qn_mask, other=0.0)  # (Q, BN)
        dy = tl.load(dy_row + t[:, None] * syl + offs_p[None, :] * syp, mask=qp_mask, other=0.0).to(tl.float32)
        xf = x.to(tl.float32)

        CB = mm(Cm, tl.trans(Bm), DOT_PREC, UPCAST)  # (Q, Q)
        causal = (offs_q[:, None] >= offs_q[None, :]) & (r[:, None] == r[None, :])
        Lm = tl.exp(tl.where(causal, (cum64[:, None] - cum64[None, :]).to(tl.float32), float("-inf")))  # (Q, Q)
        ein = tl.where(r == 0, tl.exp(cum), 0.0)  # (Q,) weight of the carried-in state
        w = tl.where(r == r_last, tl.exp(to_last), 0.0)  # (Q,) weight of each step in the outgoing state
        CBL = CB * Lm

        if HAS_Z:
            zz = tl.load(z_row + t[:, None] * szl + offs_p[None, :] * szp, mask=qp_mask, other=0.0).to(tl.float32)
            sig = tl.sigmoid(zz)
            ypre = mm((CBL * dt[None, :]).to(x.dtype), x, DOT_PREC, UPCAST)
            ypre += ein[:, None] * mm(Cm, tl.trans(S_prev.to(Cm.dtype)), DOT_PREC, UPCAST)
            if HAS_D:
                ypre += xf * Dv[None, :]
            dzv = dy * ypre * sig * (1.0 + zz * (1.0 - sig))
            tl.store(dz_row + t[:, None] * (H * P) + offs_p[None, :], dzv, mask=qp_mask)
            dyz = dy * zz * sig
        else:
            dyz = dy
        dyc = dyz.to(x.dtype)

        dYX = mm(dyc, tl.trans(x), DOT_PREC, UPCAST)  # (Q, Q): dyz_i . x_j
        dYXL = dYX * Lm
        M = dYXL * CB * dt[None, :]
        dc = tl.sum(M, 1) - tl.sum(M, 0)

        dyS = mm(dyc, S_prev.to(x.dtype), DOT_PREC, UPCAST) * ein[:, None]  # (Q, BN)
        dCv = mm((dYXL * dt[None, :]).to(x.dtype), Bm, DOT_PREC, UPCAST) + dyS
        dc += tl.sum(Cm.to(tl.float32) * dyS, 1)

        dSc = dS.to(x.dtype)
        xdS = mm(x, dSc, DOT_PREC, UPCAST)  # (Q, BN)
        dBv = mm(tl.trans(dYXL.to(x.dtype)), Cm, DOT_PREC, UPCAST) * dt[:, None] \
            + (w * dt)[:, None] * xdS
        dc -= tl.sum(xdS * Bm.to(tl.float32), 1) * w * dt
        dc += tl.where(offs_q == Q - 1, tl.sum(tl.sum(dS * S_next, 1), 0), 0.0)

        dxr = mm(tl.trans(CBL.to(x.dtype)), dyc, DOT_PREC, UPCAST)  # (Q, BP)
        dxr += w[:, None] * mm(Bm, tl.trans(dSc), DOT_PREC, UPCAST)
        dxv = dxr * dt[:, None]
        if HAS_D:
            dxv += dyz * Dv[None, :]
            dD_acc += tl.sum(dyz * xf, 0)
        ddt_direct = tl.sum(xf * dxr, 1)
        dc64 = dc.to(tl.float64)
        da = (tl.sum(dc64, 0) - tl.cumsum(dc64, 0) + dc64).to(tl.float32)  # reverse cumsum: sum_{i >= k} dc_i
        ddt = (ddt_direct + A * da) * dfac
        dA_acc += tl.sum(da * dt, 0)

        tl.store(dx_row + t[:, None] * (H * P) + offs_p[None, :], dxv, mask=qp_mask)
        tl.store(ddt_row + t * H, ddt, mask=tmask)
        tl.store(dB_row + t[:, None] * (H * N) + offs_n[None, :], dBv, mask=qn_mask)
        tl.store(dC_row + t[:, None] * (H * N) + offs_n[None, :], dCv, mask=qn_mask)

        carry = tl.where(r_last == 0, tl.exp(last), 0.0)
        dyin = (dyz * ein[:, None]).to(x.dtype)
        dS = dS * carry + mm(tl.trans(dyin), Cm, DOT_PREC, UPCAST)  # (BP, BN)
        S_next = S_prev
    tl.store(dinit_ptr + pid_bh * P * N + pn_offs, dS, mask=pn_mask)
    tl.store(dA_ptr + pid_bh, dA_acc)
    tl.store(dD_ptr + pid_bh * P + offs_p, dD_acc, mask=pmask)
