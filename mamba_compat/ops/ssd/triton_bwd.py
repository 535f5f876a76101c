"""Triton backward of the SSD scan: two light sequential passes, then one chunk-parallel kernel.

1. triton_fwd.ssd_fwd_kernel with STORE_STATES: S_c, the state entering chunk c (c = 0..nchunks).
2. ssd_dstate_kernel (sequential over chunks, backwards; one matmul per chunk): dS_c = dLoss/dS_c,
   seeded by the gradient on final_states:  dS_c = exp(c_last) [no reset] dS_{c+1} + (dyz exp(c) [r == 0])^T C.
3. ssd_bwd_kernel, one program per (chunk, batch*head), everything else from S_prev = S_c and
   dS = dS_{c+1}. With c the chunk-local cumsum of a = dt*A, Lm_ij = exp(c_i - c_j) [j <= i, same segment],
   dyz = dy * silu(z), w'_j = exp(c_last - c_j) [r_j == r_last]:

    dx_raw = (CB * Lm)^T @ dyz + w' * (B @ dS^T)
    dx     = dt * dx_raw + D * dyz,        ddt_direct = rowsum(x * dx_raw)
    dC     = (dyz x^T * Lm * dt_j) @ B + exp(c) [r == 0] * (dyz @ S_prev)
    dB     = dt * ((dyz x^T * Lm)^T @ C) + w' dt * (x @ dS)
    dc_i   = rowsum(M) - colsum(M) + <dyz_i, carried-state output_i>     M = dyz x^T * CB * Lm * dt_j (i > j)
    da_k   = sum_{i >= k} dc_i + exp(c_last) [no reset] <dS, S_prev> + sum_{j < k} w'_j dt_j x_j^T dS B_j
    ddt    = ddt_direct + A da,  dA += sum(dt * da)

The outgoing-state part of da is summed directly rather than as a difference of large terms, so dA
keeps its precision when |dt*A| is large. dB and dC are written per head and summed over the heads of
a group by the launcher; dA and D's gradient are written per (batch*head, chunk) and summed likewise.
dz recomputes the pre-gate output.
"""
from __future__ import annotations

import triton
import triton.language as tl

from .triton_common import autotune_configs, head_scalars, mm, program_tile
from .triton_fwd import chunk_resets, process_dt


@triton.autotune(configs=autotune_configs(bp=True, light=True), key=["P", "N", "Q", "SPLIT", "LOCAL"])
@triton.jit
def ssd_dstate_kernel(
    dt_ptr, A_ptr, C_ptr, z_ptr, dtb_ptr, seq_ptr, dy_ptr, dfinal_ptr, dstates_ptr, dinit_ptr, gds_ptr, gdecay_ptr,
    L, H, P, N, HPG, dt_min, dt_max,
    sdb, sdl, sdh,
    sCb, sCl, sCg, sCn,
    szb, szl, szh, szp,
    syb, syl, syh, syp,
    ssb, ssl,
    HAS_Z: tl.constexpr, HAS_DTB: tl.constexpr, HAS_DFINAL: tl.constexpr,
    HAS_SEQ: tl.constexpr, SOFTPLUS: tl.constexpr, CLAMP: tl.constexpr, SPLIT: tl.constexpr, LOCAL: tl.constexpr,
    K, Q: tl.constexpr, BN: tl.constexpr, DOT_PREC: tl.constexpr, UPCAST: tl.constexpr, BP: tl.constexpr,
):
    """Reverse sweep of the state gradient: dstates (B*H, nchunks + 1, P, N), entry c = dLoss / d(state
    entering chunk c); entry nchunks = dfinal, entry 0 also goes to dinit (fp32).
    SPLIT (a third grid axis over groups of K chunks, as the forward's): LOCAL writes each group's own
    gradient at its start (from zero at its end) to gds (B*H, ngroups, P, N) and its decay to gdecay; after
    state_combine_kernel(REVERSE) gds holds the gradient at each group's end, from which the second launch
    sweeps the group, writing its dstates entries (entry 0 by the first group; dinit comes from the combine)."""
    pid_p = tl.program_id(0)
    pid_bh = tl.program_id(1).to(tl.int64)
    b, h, g, offs_p, offs_n, pmask, nmask, pn_mask, pn_offs = program_tile(pid_bh, pid_p, H, HPG, P, N, BP, BN)
    offs_q = tl.arange(0, Q)
    A, dtb = head_scalars(A_ptr, dtb_ptr, h, HAS_DTB)
    dt_row = dt_ptr + b * sdb + h * sdh
    C_row = C_ptr + b * sCb + g * sCg
    z_row = z_ptr + b * szb + h * szh
    dy_row = dy_ptr + b * syb + h * syh
    seq_row = seq_ptr + b * ssb
    nchunks = tl.cdiv(L, Q)
    ds_base = dstates_ptr + pid_bh * (nchunks + 1) * P * N
    if SPLIT:
        grp = tl.program_id(2)
        ngroups = tl.cdiv(nchunks, K)
        c_lo = grp * K
        c_hi = tl.minimum(c_lo + K, nchunks)
        g_base = gds_ptr + (pid_bh * ngroups + grp) * P * N
        if LOCAL:
            dS = tl.zeros([BP, BN], dtype=tl.float32)
        else:
            dS = tl.load(g_base + pn_offs, mask=pn_mask, other=0.0)
    else:
        c_lo = 0
        c_hi = nchunks
        if HAS_DFINAL:
            dS = tl.load(dfinal_ptr + pid_bh * P * N + pn_offs, mask=pn_mask, other=0.0).to(tl.float32)
        else:
            dS = tl.zeros([BP, BN], dtype=tl.float32)
    decay = tl.sum(tl.zeros([Q], dtype=tl.float32), 0) + 1.0  # LOCAL: product of the group's carries
    for k in range(0, c_hi - c_lo):
        ci = c_hi - 1 - k
        if not LOCAL:
            tl.store(ds_base + (ci + 1) * P * N + pn_offs, dS.to(dstates_ptr.dtype.element_ty), mask=pn_mask)
        t = ci * Q + offs_q
        tmask = t < L
        t = t.to(tl.int64)
        raw = tl.load(dt_row + t * sdl, mask=tmask, other=0.0).to(tl.float32)
        dt, _ = process_dt(raw, dtb, dt_min, dt_max, SOFTPLUS, CLAMP)
        dt = tl.where(tmask, dt, 0.0)
        cum = tl.cumsum(dt * A, 0)
        last = tl.sum(tl.where(offs_q == Q - 1, cum, 0.0), 0)
        r = chunk_resets(seq_row, t, tmask, ssl, Q, HAS_SEQ)
        r_last = tl.max(r, 0)
        qp_mask = tmask[:, None] & pmask[None, :]
        dy = tl.load(dy_row + t[:, None] * syl + offs_p[None, :] * syp, mask=qp_mask, other=0.0).to(tl.float32)
        if HAS_Z:
            zz = tl.load(z_row + t[:, None] * szl + offs_p[None, :] * szp, mask=qp_mask, other=0.0).to(tl.float32)
            dy = dy * zz * tl.sigmoid(zz)
        Cm = tl.load(C_row + t[:, None] * sCl + offs_n[None, :] * sCn, mask=tmask[:, None] & nmask[None, :],
                     other=0.0)  # (Q, BN)
        ein = tl.where(r == 0, tl.exp(cum), 0.0)
        carry = tl.where(r_last == 0, tl.exp(last), 0.0)
        dyin = (dy * ein[:, None]).to(Cm.dtype)
        dS = dS * carry + mm(tl.trans(dyin), Cm, DOT_PREC, UPCAST)  # (BP, BN)
        decay = decay * carry
    if LOCAL:
        tl.store(g_base + pn_offs, dS, mask=pn_mask)
        if pid_p == 0:
            tl.store(gdecay_ptr + pid_bh * ngroups + grp, decay)
    elif SPLIT:
        if grp == 0:
            tl.store(ds_base + pn_offs, dS.to(dstates_ptr.dtype.element_ty), mask=pn_mask)
    else:
        tl.store(ds_base + pn_offs, dS.to(dstates_ptr.dtype.element_ty), mask=pn_mask)
        tl.store(dinit_ptr + pid_bh * P * N + pn_offs, dS, mask=pn_mask)



@triton.autotune(configs=autotune_configs(bwd=True), key=["P", "N", "Q"])
@triton.jit
def ssd_bwd_kernel(
    x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, dtb_ptr, seq_ptr, dy_ptr, states_ptr, dstates_ptr,
    dx_ptr, ddt_ptr, dB_ptr, dC_ptr, dz_ptr, dA_ptr, dD_ptr,
    L, H, P, N, HPG, dt_min, dt_max,
    sxb, sxl, sxh, sxp,
    sdb, sdl, sdh,
    sBb, sBl, sBg, sBn,
    sCb, sCl, sCg, sCn,
    szb, szl, szh, szp,
    syb, syl, syh, syp,
    ssb, ssl,
    sDh, sDp,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_DTB: tl.constexpr,
    HAS_SEQ: tl.constexpr, SOFTPLUS: tl.constexpr, CLAMP: tl.constexpr,
    Q: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr, DOT_PREC: tl.constexpr, UPCAST: tl.constexpr,
):
    ci = tl.program_id(0)
    pid_bh = tl.program_id(1).to(tl.int64)
    b, h, g, offs_p, offs_n, pmask, nmask, pn_mask, pn_offs = program_tile(pid_bh, 0, H, HPG, P, N, BP, BN)
    offs_q = tl.arange(0, Q)
    A, dtb = head_scalars(A_ptr, dtb_ptr, h, HAS_DTB)
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
    S_prev = tl.load(states_ptr + (pid_bh * (nchunks + 1) + ci) * P * N + pn_offs, mask=pn_mask,
                     other=0.0).to(tl.float32)  # (BP, BN) state entering the chunk
    dS = tl.load(dstates_ptr + (pid_bh * (nchunks + 1) + ci + 1) * P * N + pn_offs, mask=pn_mask,
                 other=0.0).to(tl.float32)  # (BP, BN) gradient on the state leaving it
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
    # the diagonal cancels in rowsum - colsum: leave it out (it is the largest term when dt is large)
    M = tl.where(offs_q[:, None] > offs_q[None, :], dYXL * CB * dt[None, :], 0.0)
    dc = tl.sum(M, 1) - tl.sum(M, 0)

    dyS = mm(dyc, S_prev.to(x.dtype), DOT_PREC, UPCAST) * ein[:, None]  # (Q, BN)
    dCv = mm((dYXL * dt[None, :]).to(x.dtype), Bm, DOT_PREC, UPCAST) + dyS
    dc += tl.sum(Cm.to(tl.float32) * dyS, 1)

    dSc = dS.to(x.dtype)
    xdS = mm(x, dSc, DOT_PREC, UPCAST)  # (Q, BN)
    dBv = mm(tl.trans(dYXL.to(x.dtype)), Cm, DOT_PREC, UPCAST) * dt[:, None] \
        + (w * dt)[:, None] * xdS
    # outgoing-state part of d/da_k, summed directly (no difference of large terms):
    #   carry * <dS, S_prev> + sum_{j < k} w_j dt_j x_j^T dS B_j
    u = tl.sum(xdS * Bm.to(tl.float32), 1) * w * dt  # (Q,)
    carry = tl.where(r_last == 0, tl.exp(last), 0.0)
    da_state = tl.cumsum(u, 0) - u + carry * tl.sum(tl.sum(dS * S_prev, 1), 0)

    dxr = mm(tl.trans(CBL.to(x.dtype)), dyc, DOT_PREC, UPCAST)  # (Q, BP)
    dxr += w[:, None] * mm(Bm, tl.trans(dSc), DOT_PREC, UPCAST)
    dxv = dxr * dt[:, None]
    if HAS_D:
        dxv += dyz * Dv[None, :]
        tl.store(dD_ptr + (pid_bh * nchunks + ci) * P + offs_p, tl.sum(dyz * xf, 0), mask=pmask)
    ddt_direct = tl.sum(xf * dxr, 1)
    dc64 = dc.to(tl.float64)
    da = (tl.sum(dc64, 0) - tl.cumsum(dc64, 0) + dc64).to(tl.float32) + da_state  # revcumsum: sum_{i>=k} dc_i
    ddt = (ddt_direct + A * da) * dfac
    tl.store(dA_ptr + pid_bh * nchunks + ci, tl.sum(da * dt, 0))

    tl.store(dx_row + t[:, None] * (H * P) + offs_p[None, :], dxv, mask=qp_mask)
    tl.store(ddt_row + t * H, ddt, mask=tmask)
    tl.store(dB_row + t[:, None] * (H * N) + offs_n[None, :], dBv, mask=qn_mask)
    tl.store(dC_row + t[:, None] * (H * N) + offs_n[None, :], dCv, mask=qn_mask)
