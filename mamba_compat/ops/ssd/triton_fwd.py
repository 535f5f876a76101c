"""Triton forward of the SSD scan: one kernel, one program per (head-dim block, batch*head).

Each program walks the sequence chunk by chunk (Q steps per chunk) and carries its (BP, N) slice of
the state in fp32 registers, so the inter-chunk recurrence needs no extra launch or global round
trip. Per chunk (c = chunk-local cumsum of dt*A, r = resets seen so far in the chunk):

    y     = ((C B^T) * exp(c_i - c_j) * [j <= i, r_i == r_j] * dt_j) @ x          intra-chunk
          + exp(c_i) [r_i == 0] * (C @ S^T)                                      carried state
          + D x,  then * silu(z)
    S    <- exp(c_last) [no reset in chunk] * S + (x * dt * exp(c_last - c) [r == r_last])^T @ B

Modes (constexpr flags), all walking chunks in order and carrying the state in registers:
  * one-launch forward (COMPUTE_Y): y and the final state, one program per (head-dim block, batch*head);
  * state pass (STORE_STATES, COMPUTE_Y=False): the state entering every chunk to `states`
    (B*H, nchunks + 1, P, N; entry nchunks = final), the backward's first pass;
  * chunk-parallel (SPLIT, a third grid axis over groups of K chunks), for long sequences with few (b, h):
      LOCAL: each group's own state (from zero) to `gstates` (B*H, ngroups, P, N) and its decay
             (the product of its chunks' carries) to `gdecay` (B*H, ngroups);
      then state_combine_kernel turns those into the state entering each group, in place;
      then COMPUTE_Y (or STORE_STATES) per group, starting from the state entering it.
"""
from __future__ import annotations

import triton
import triton.language as tl

from .triton_common import autotune_configs, head_scalars, mm, program_tile


@triton.jit
def process_dt(raw, dtb, dt_min, dt_max, SOFTPLUS: tl.constexpr, CLAMP: tl.constexpr):
    """raw dt (+ bias) -> (dt used, d dt_used / d raw). softplus as torch (threshold 20); clamp
    gradient passes where dt_min <= v <= dt_max, as torch.clamp's."""
    v = raw + dtb
    grad = tl.full(v.shape, 1.0, tl.float32)
    if SOFTPLUS:
        sp = tl.where(v > 20.0, v, tl.log(1.0 + tl.exp(tl.minimum(v, 20.0))))
        grad = tl.where(v > 20.0, 1.0, tl.sigmoid(v))
        v = sp
    if CLAMP:
        inside = (v >= dt_min) & (v <= dt_max)
        grad = tl.where(inside, grad, 0.0)
        v = tl.minimum(tl.maximum(v, dt_min), dt_max)
    return v, grad


@triton.jit
def chunk_resets(seq_row, t, tmask, ssl, Q: tl.constexpr, HAS_SEQ: tl.constexpr):
    """(Q,) int32 count of seq_idx changes at or before each step of the chunk (0 without seq_idx)."""
    if HAS_SEQ:
        cur = tl.load(seq_row + t * ssl, mask=tmask, other=0)
        prev = tl.load(seq_row + (t - 1) * ssl, mask=tmask & (t > 0), other=0)
        rst = tl.where(tmask & (t > 0) & (cur != prev), 1, 0)
        r = tl.cumsum(rst, 0)
    else:
        r = tl.zeros([Q], dtype=tl.int32)
    return r


@triton.autotune(configs=autotune_configs(bp=True), key=["P", "N", "Q", "COMPUTE_Y", "STORE_STATES", "SPLIT", "LOCAL"])
@triton.jit
def ssd_fwd_kernel(
    x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, dtb_ptr, init_ptr, seq_ptr,
    y_ptr, final_ptr, states_ptr, gstates_ptr, gdecay_ptr,
    L, H, P, N, HPG, dt_min, dt_max,
    sxb, sxl, sxh, sxp,
    sdb, sdl, sdh,
    sBb, sBl, sBg, sBn,
    sCb, sCl, sCg, sCn,
    szb, szl, szh, szp,
    syb, syl, syh, syp,
    ssb, ssl,
    sDh, sDp,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_DTB: tl.constexpr, HAS_INIT: tl.constexpr,
    HAS_SEQ: tl.constexpr, SOFTPLUS: tl.constexpr, CLAMP: tl.constexpr,
    COMPUTE_Y: tl.constexpr, STORE_STATES: tl.constexpr, SPLIT: tl.constexpr, LOCAL: tl.constexpr, K,
    Q: tl.constexpr, BN: tl.constexpr, DOT_PREC: tl.constexpr, UPCAST: tl.constexpr, BP: tl.constexpr,
):
    pid_p = tl.program_id(0)
    pid_bh = tl.program_id(1).to(tl.int64)
    b, h, g, offs_p, offs_n, pmask, nmask, pn_mask, pn_offs = program_tile(pid_bh, pid_p, H, HPG, P, N, BP, BN)
    offs_q = tl.arange(0, Q)
    A, dtb = head_scalars(A_ptr, dtb_ptr, h, HAS_DTB)
    x_row = x_ptr + b * sxb + h * sxh
    dt_row = dt_ptr + b * sdb + h * sdh
    B_row = B_ptr + b * sBb + g * sBg
    C_row = C_ptr + b * sCb + g * sCg
    z_row = z_ptr + b * szb + h * szh
    y_row = y_ptr + b * syb + h * syh
    seq_row = seq_ptr + b * ssb
    if HAS_D:
        Dv = tl.load(D_ptr + h * sDh + offs_p * sDp, mask=pmask, other=0.0).to(tl.float32)  # (BP,)

    nchunks = tl.cdiv(L, Q)
    st_base = states_ptr + pid_bh * (nchunks + 1) * P * N
    if SPLIT:  # one group of K chunks: from zero (LOCAL) or from the state entering it
        grp = tl.program_id(2)
        ngroups = tl.cdiv(nchunks, K)
        c_lo = grp * K
        c_hi = tl.minimum(c_lo + K, nchunks)
        g_base = gstates_ptr + (pid_bh * ngroups + grp) * P * N
        if LOCAL:
            state = tl.zeros([BP, BN], dtype=tl.float32)
        else:
            state = tl.load(g_base + pn_offs, mask=pn_mask, other=0.0)
    else:
        c_lo = 0
        c_hi = nchunks
        if HAS_INIT:
            state = tl.load(init_ptr + pid_bh * P * N + pn_offs, mask=pn_mask, other=0.0).to(tl.float32)
        else:
            state = tl.zeros([BP, BN], dtype=tl.float32)
    decay = tl.sum(tl.zeros([Q], dtype=tl.float32), 0) + 1.0  # LOCAL: product of the group's carries

    for ci in range(c_lo, c_hi):
        if STORE_STATES:
            tl.store(st_base + ci * P * N + pn_offs, state.to(states_ptr.dtype.element_ty), mask=pn_mask)
        t = ci * Q + offs_q
        tmask = t < L
        t = t.to(tl.int64)
        raw = tl.load(dt_row + t * sdl, mask=tmask, other=0.0).to(tl.float32)
        dt, _ = process_dt(raw, dtb, dt_min, dt_max, SOFTPLUS, CLAMP)
        dt = tl.where(tmask, dt, 0.0)  # padded steps: no decay, no input
        # chunk-local cumsum, differenced in fp64: no cancellation when |dt*A| is large
        cum64 = tl.cumsum((dt * A).to(tl.float64), 0)  # (Q,)
        last64 = tl.sum(tl.where(offs_q == Q - 1, cum64, 0.0), 0)
        cum = cum64.to(tl.float32)
        to_last = (last64 - cum64).to(tl.float32)  # (Q,) decay exponent from each step to the chunk end
        last = last64.to(tl.float32)
        r = chunk_resets(seq_row, t, tmask, ssl, Q, HAS_SEQ)
        r_last = tl.max(r, 0)

        x = tl.load(x_row + t[:, None] * sxl + offs_p[None, :] * sxp, mask=tmask[:, None] & pmask[None, :],
                    other=0.0)  # (Q, BP)
        Bm = tl.load(B_row + t[:, None] * sBl + offs_n[None, :] * sBn, mask=tmask[:, None] & nmask[None, :],
                     other=0.0)  # (Q, BN)
        if COMPUTE_Y:
            Cm = tl.load(C_row + t[:, None] * sCl + offs_n[None, :] * sCn, mask=tmask[:, None] & nmask[None, :],
                         other=0.0)  # (Q, BN)
            CB = mm(Cm, tl.trans(Bm), DOT_PREC, UPCAST)  # (Q, Q)
            causal = (offs_q[:, None] >= offs_q[None, :]) & (r[:, None] == r[None, :])
            seg = tl.where(causal, (cum64[:, None] - cum64[None, :]).to(tl.float32), float("-inf"))
            W = CB * tl.exp(seg) * dt[None, :]
            y = mm(W.to(x.dtype), x, DOT_PREC, UPCAST)  # (Q, BP)
            ein = tl.where(r == 0, tl.exp(cum), 0.0)
            cs = mm(Cm, tl.trans(state.to(Cm.dtype)), DOT_PREC, UPCAST)  # (Q, BP)
            y += cs * ein[:, None]
            if HAS_D:
                y += x.to(tl.float32) * Dv[None, :]
            if HAS_Z:
                zz = tl.load(z_row + t[:, None] * szl + offs_p[None, :] * szp, mask=tmask[:, None] & pmask[None, :],
                             other=0.0).to(tl.float32)
                y = y * zz * tl.sigmoid(zz)
            tl.store(y_row + t[:, None] * syl + offs_p[None, :] * syp, y.to(y_ptr.dtype.element_ty),
                     mask=tmask[:, None] & pmask[None, :])
        w = tl.where(r == r_last, tl.exp(to_last) * dt, 0.0)  # (Q,) weight of each step in the chunk's state
        carry = tl.where(r_last == 0, tl.exp(last), 0.0)
        xw = (x.to(tl.float32) * w[:, None]).to(x.dtype)
        state = state * carry + mm(tl.trans(xw), Bm, DOT_PREC, UPCAST)  # (BP, BN)
        decay = decay * carry
    if LOCAL:
        tl.store(g_base + pn_offs, state, mask=pn_mask)
        if pid_p == 0:
            tl.store(gdecay_ptr + pid_bh * ngroups + grp, decay)
    elif SPLIT:
        if STORE_STATES:
            if grp == ngroups - 1:
                tl.store(st_base + nchunks * P * N + pn_offs, state.to(states_ptr.dtype.element_ty), mask=pn_mask)
    else:
        if STORE_STATES:
            tl.store(st_base + nchunks * P * N + pn_offs, state.to(states_ptr.dtype.element_ty), mask=pn_mask)
        tl.store(final_ptr + pid_bh * P * N + pn_offs, state, mask=pn_mask)


@triton.jit
def state_combine_kernel(gstates_ptr, gdecay_ptr, init_ptr, final_ptr, PN, NG,
                         HAS_INIT: tl.constexpr, REVERSE: tl.constexpr, BLOCK: tl.constexpr):
    """Group-level scan of the chunk-parallel passes, in place, elementwise over (P*N) blocks of one (b, h):
    gstates[g] holds group g's own state (from zero; for REVERSE its own state gradient, from zero at its end)
    and gdecay[g] its decay; on return gstates[g] holds the state entering group g (REVERSE: the gradient at
    its end), final the state after the last group (REVERSE: the gradient on the initial state).
        S <- init (or 0);  for g in order (REVERSE: last first):  gstates[g], S = S, gdecay[g] * S + gstates[g]"""
    pid_e = tl.program_id(0)
    pid_bh = tl.program_id(1).to(tl.int64)
    offs = pid_e * BLOCK + tl.arange(0, BLOCK)
    m = offs < PN
    base = gstates_ptr + pid_bh * NG * PN
    if HAS_INIT:
        s = tl.load(init_ptr + pid_bh * PN + offs, mask=m, other=0.0).to(tl.float32)
    else:
        s = tl.zeros([BLOCK], dtype=tl.float32)
    for k in range(0, NG):
        if REVERSE:
            gi = NG - 1 - k
        else:
            gi = k
        own = tl.load(base + gi * PN + offs, mask=m, other=0.0)
        d = tl.load(gdecay_ptr + pid_bh * NG + gi)
        tl.store(base + gi * PN + offs, s, mask=m)
        s = d * s + own
    tl.store(final_ptr + pid_bh * PN + offs, s, mask=m)
