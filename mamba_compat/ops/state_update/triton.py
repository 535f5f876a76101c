"""Decode step (`selective_state_update`) as one Triton kernel; `state` is written in place.

Shapes (normalized by the public function): state (S, H, P, N) with S >= batch when
state_batch_indices is given, x/dt/z (b, H, P), A (H, P, N), B/C (b, G, N), D/dt_bias (H, P); any of
them may be strided views (A, dt, D, dt_bias are often broadcasts of per-head values).

One program per (batch row, head, block of P rows): load the (BP, N) state tile, decay it, add
dt x B, write it back and reduce against C. Arithmetic is fp32; the state keeps its own dtype. A
negative state_batch_indices entry is a pad slot: no state row is touched and its output is zero.
The kernel is bandwidth-bound: every state byte is read once and written once.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..ssd.triton_common import autotune_configs, pow2_at_least

__all__ = ["state_update"]


def _prune_decode_configs(configs, named_args, **kwargs):
    """Drop tiles taller than P (rounded up to a power of two) and tiles over 8192 state elements."""
    p, bn = named_args["P"], pow2_at_least(named_args["N"], 1)
    keep = [c for c in configs if c.kwargs["BP"] <= pow2_at_least(p, 1) and c.kwargs["BP"] * bn <= 8192]
    return keep or [min(configs, key=lambda c: c.kwargs["BP"])]


# restore_value: autotuning runs the kernel many times on the real arguments; without it the in-place state would
# be advanced once per timing run on the first call of each key.
# BP (rows of P per program) is tuned per (P, N, batch size class): few large tiles suit small batches (one
# program per head), many small ones keep more bytes in flight for large batches.
@triton.autotune(configs=autotune_configs(decode=True), key=["P", "N", "BATCH_CLASS"], restore_value=["state_ptr"],
                 prune_configs_by={"early_config_prune": _prune_decode_configs})
@triton.jit
def state_update_kernel(
    state_ptr, x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, dtb_ptr, idx_ptr, out_ptr,
    H, P, N, HPG,
    sSb, sSh, sSp, sSn,
    sxb, sxh, sxp,
    sdb, sdh, sdp,
    sAh, sAp, sAn,
    sBb, sBg, sBn,
    sCb, sCg, sCn,
    sDh, sDp,
    szb, szh, szp,
    sbh, sbp,
    sob, soh, sop,
    BATCH_CLASS,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_DTB: tl.constexpr, HAS_IDX: tl.constexpr,
    SOFTPLUS: tl.constexpr, A_PER_ROW: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr,
):
    pid_b = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1)
    pid_p = tl.program_id(2)
    g = h // HPG
    offs_p = pid_p * BP + tl.arange(0, BP)
    offs_n = tl.arange(0, BN)
    pmask = offs_p < P
    nmask = offs_n < N
    smask = pmask[:, None] & nmask[None, :]
    if HAS_IDX:
        row = tl.load(idx_ptr + pid_b).to(tl.int64)
        valid = row >= 0  # a negative index is a pad slot
        row = tl.maximum(row, 0)
        smask = smask & valid
    else:
        row = pid_b
    s_ptrs = state_ptr + row * sSb + h * sSh + offs_p[:, None] * sSp + offs_n[None, :] * sSn
    s = tl.load(s_ptrs, mask=smask, other=0.0).to(tl.float32)  # (BP, BN)

    x = tl.load(x_ptr + pid_b * sxb + h * sxh + offs_p * sxp, mask=pmask, other=0.0).to(tl.float32)
    dt = tl.load(dt_ptr + pid_b * sdb + h * sdh + offs_p * sdp, mask=pmask, other=0.0).to(tl.float32)
    if HAS_DTB:
        dt += tl.load(dtb_ptr + h * sbh + offs_p * sbp, mask=pmask, other=0.0).to(tl.float32)
    if SOFTPLUS:
        dt = tl.where(dt > 20.0, dt, tl.log(1.0 + tl.exp(tl.minimum(dt, 20.0))))
    if A_PER_ROW:  # A constant along N (Mamba2: one A per head): one exp per row instead of per element
        A = tl.load(A_ptr + h * sAh + offs_p * sAp, mask=pmask, other=0.0).to(tl.float32)
        decay = tl.exp(dt * A)[:, None]  # (BP, 1)
    else:
        A = tl.load(A_ptr + h * sAh + offs_p[:, None] * sAp + offs_n[None, :] * sAn,
                    mask=pmask[:, None] & nmask[None, :], other=0.0).to(tl.float32)
        decay = tl.exp(dt[:, None] * A)  # (BP, BN)
    Bv = tl.load(B_ptr + pid_b * sBb + g * sBg + offs_n * sBn, mask=nmask, other=0.0).to(tl.float32)
    Cv = tl.load(C_ptr + pid_b * sCb + g * sCg + offs_n * sCn, mask=nmask, other=0.0).to(tl.float32)

    s = s * decay + (dt * x)[:, None] * Bv[None, :]
    tl.store(s_ptrs, s.to(state_ptr.dtype.element_ty), mask=smask)
    out = tl.sum(s * Cv[None, :], 1)  # (BP,)
    if HAS_D:
        out += x * tl.load(D_ptr + h * sDh + offs_p * sDp, mask=pmask, other=0.0).to(tl.float32)
    if HAS_Z:
        zz = tl.load(z_ptr + pid_b * szb + h * szh + offs_p * szp, mask=pmask, other=0.0).to(tl.float32)
        out = out * zz * tl.sigmoid(zz)
    if HAS_IDX:
        out = tl.where(valid, out, 0.0)
    tl.store(out_ptr + pid_b * sob + h * soh + offs_p * sop, out.to(out_ptr.dtype.element_ty), mask=pmask)


def state_update(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, state_batch_indices):
    """state (S, H, P, N) updated in place; x/dt/z (b, H, P); A (H, P, N); B/C (b, G, N); D/dt_bias (H, P);
    state_batch_indices (b,) int or None -> out (b, H, P) in x.dtype."""
    b, h, p = x.shape
    g, n = B.shape[1], B.shape[2]
    out = torch.empty((b, h, p), dtype=x.dtype, device=x.device)
    zs = z.stride() if z is not None else (0, 0, 0)
    Ds = D.stride() if D is not None else (0, 0)
    bs = dt_bias.stride() if dt_bias is not None else (0, 0)
    grid = lambda meta: (b, h, triton.cdiv(p, meta["BP"]))  # noqa: E731
    state_update_kernel[grid](
        state, x, dt, A, B, C, x if D is None else D, x if z is None else z, x if dt_bias is None else dt_bias,
        x if state_batch_indices is None else state_batch_indices, out,
        h, p, n, h // g,
        *state.stride(), *x.stride(), *dt.stride(), *A.stride(), *B.stride(), *C.stride(), *Ds, *zs, *bs,
        *out.stride(), max(b, 1).bit_length(),
        HAS_D=D is not None, HAS_Z=z is not None, HAS_DTB=dt_bias is not None,
        HAS_IDX=state_batch_indices is not None, SOFTPLUS=bool(dt_softplus), A_PER_ROW=A.stride(2) == 0,
        BN=pow2_at_least(n, 1),
    )
    return out
