"""Grouped gated RMSNorm (reference.py's semantics) as Triton kernels, registered as torch.library custom ops.

Inputs are 2-D here: x, z (M, D) with unit column stride and any row stride (Mamba2's z is a slice of
in_proj's output, read in place), weight (D,); groups of N = group_size consecutive columns. fp32 math
(fp64 for fp64 inputs), outputs in the inputs' dtypes.

Forward: one program per (BM rows, group); the group's N columns are one register tile of BN = N rounded up
to a power of two when BN <= 8192 (MAMBA_COMPAT_NORM_BLOCK overrides the cap), else two passes over chunks
of BN columns (sum of squares, then normalise), the second reading x back from L2.
Backward: rstd is recomputed from x (no saved statistics). With u = x * silu(z) (gate before the norm) or
u = x, uhat = u * rstd, g = dy * silu(z) (gate after the norm) or dy:
    dweight += sum_rows g * uhat;   du = rstd * (g*w - uhat * mean(g*w*uhat))
    dx = du * silu(z) | du;   dz = du * x * silu'(z) (gate before) | dy * uhat * w * silu'(z) (gate after)
One program per (R row tiles, group), the tiles unrolled, keeps its dweight partial in registers; the
(programs, D) fp32 partials are summed in PyTorch. Two passes per tile past the cap.

Runs on CUDA tensors, and on CPU tensors under TRITON_INTERPRET=1 (tests).
"""
from __future__ import annotations

import os
from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from ..ssd.triton_common import interpreting

__all__ = ["rmsnorm_fwd", "rmsnorm_bwd", "rmsnorm_gated"]


@triton.jit
def _sig(a):
    return 1.0 / (1.0 + tl.exp(-a))


@triton.jit
def _load_chunk(x_ptr, z_ptr, w_ptr, rows, rmask, cols, cmask, sxm, szm, HAS_Z: tl.constexpr, NBG: tl.constexpr,
                ACC: tl.constexpr):
    """x, u (the normalised input), gate = silu(z), silu'(z) and w for rows (BM,) x absolute columns (BN,)."""
    m2 = rmask[:, None] & cmask[None, :]
    x = tl.load(x_ptr + rows[:, None] * sxm + cols[None, :], mask=m2, other=0.0).to(ACC)
    w = tl.load(w_ptr + cols, mask=cmask, other=0.0).to(ACC)
    u = x
    gate = x
    dgate = x
    if HAS_Z:
        zz = tl.load(z_ptr + rows[:, None] * szm + cols[None, :], mask=m2, other=0.0).to(ACC)
        sg = _sig(zz)
        gate = zz * sg
        dgate = sg * (1.0 + zz * (1.0 - sg))
        if not NBG:
            u = x * gate
    return x, u, gate, dgate, w, m2


@triton.jit
def _rmsnorm_fwd_kernel(
    x_ptr, z_ptr, w_ptr, y_ptr, M, N, sxm, szm, sym, eps,
    HAS_Z: tl.constexpr, NBG: tl.constexpr, ONE_PASS: tl.constexpr, ACC: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr,
):
    pid_m = tl.program_id(0)
    col0 = tl.program_id(1) * N
    rows = (pid_m * BM + tl.arange(0, BM)).to(tl.int64)
    rmask = rows < M
    if ONE_PASS:
        cols = col0 + tl.arange(0, BN)
        cmask = tl.arange(0, BN) < N
        x, u, gate, dgate, w, m2 = _load_chunk(x_ptr, z_ptr, w_ptr, rows, rmask, cols, cmask, sxm, szm, HAS_Z, NBG,
                                               ACC)
        rstd = tl.rsqrt(tl.sum(u * u, axis=1) / N + eps)
        y = u * rstd[:, None] * w[None, :]
        if HAS_Z and NBG:
            y = y * gate
        tl.store(y_ptr + rows[:, None] * sym + cols[None, :], y.to(y_ptr.dtype.element_ty), mask=m2)
    else:
        ss = tl.zeros((BM,), dtype=ACC)
        for c0 in range(0, N, BN):
            cols = col0 + c0 + tl.arange(0, BN)
            cmask = (c0 + tl.arange(0, BN)) < N
            x, u, gate, dgate, w, m2 = _load_chunk(x_ptr, z_ptr, w_ptr, rows, rmask, cols, cmask, sxm, szm, HAS_Z,
                                                   NBG, ACC)
            ss += tl.sum(u * u, axis=1)
        rstd = tl.rsqrt(ss / N + eps)
        for c0 in range(0, N, BN):
            cols = col0 + c0 + tl.arange(0, BN)
            cmask = (c0 + tl.arange(0, BN)) < N
            x, u, gate, dgate, w, m2 = _load_chunk(x_ptr, z_ptr, w_ptr, rows, rmask, cols, cmask, sxm, szm, HAS_Z,
                                                   NBG, ACC)
            y = u * rstd[:, None] * w[None, :]
            if HAS_Z and NBG:
                y = y * gate
            tl.store(y_ptr + rows[:, None] * sym + cols[None, :], y.to(y_ptr.dtype.element_ty), mask=m2)


@triton.jit
def _load_bwd_chunk(x_ptr, z_ptr, w_ptr, dy_ptr, rows, rmask, cols, cmask, sxm, szm, sdm, HAS_Z: tl.constexpr,
                    NBG: tl.constexpr, ACC: tl.constexpr):
    """_load_chunk's tiles plus dy's, for the backward."""
    x, u, gate, dgate, w, m2 = _load_chunk(x_ptr, z_ptr, w_ptr, rows, rmask, cols, cmask, sxm, szm, HAS_Z, NBG, ACC)
    dy = tl.load(dy_ptr + rows[:, None] * sdm + cols[None, :], mask=m2, other=0.0).to(ACC)
    return x, u, gate, dgate, w, m2, dy


@triton.jit
def _bwd_chunk(x, u, gate, dgate, w, dy, rstd, cc, HAS_Z: tl.constexpr, NBG: tl.constexpr):
    """-> (dx, dz, dweight contribution) of one chunk, given rstd (BM,) and cc = mean(g*w*uhat) (BM,)."""
    uhat = u * rstd[:, None]
    g = dy
    dz = dy
    if HAS_Z and NBG:
        dz = dy * uhat * w[None, :] * dgate
        g = dy * gate
    du = (g * w[None, :] - uhat * cc[:, None]) * rstd[:, None]
    dx = du
    if HAS_Z and not NBG:
        dx = du * gate
        dz = du * x * dgate
    return dx, dz, g * uhat


@triton.jit
def _rmsnorm_bwd_kernel(
    x_ptr, z_ptr, w_ptr, dy_ptr, dx_ptr, dz_ptr, dw_ptr, M, N, D, sxm, szm, sdm, eps,
    HAS_Z: tl.constexpr, NBG: tl.constexpr, ONE_PASS: tl.constexpr, ACC: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, R: tl.constexpr,
):
    # R row tiles of BM rows per program, unrolled
    pid = tl.program_id(0)
    col0 = tl.program_id(1) * N
    if ONE_PASS:
        cols = col0 + tl.arange(0, BN)
        cmask = tl.arange(0, BN) < N
        dw_acc = tl.zeros((BM, BN), dtype=ACC)
        for k in tl.static_range(R):
            rows = ((pid * R + k) * BM + tl.arange(0, BM)).to(tl.int64)
            rmask = rows < M
            x, u, gate, dgate, w, m2, dy = _load_bwd_chunk(x_ptr, z_ptr, w_ptr, dy_ptr, rows, rmask, cols, cmask, sxm,
                                                           szm, sdm, HAS_Z, NBG, ACC)
            rstd = tl.rsqrt(tl.sum(u * u, axis=1) / N + eps)
            g = dy
            if HAS_Z and NBG:
                g = dy * gate
            cc = tl.sum(g * w[None, :] * u, axis=1) * rstd / N
            dx, dz, dwc = _bwd_chunk(x, u, gate, dgate, w, dy, rstd, cc, HAS_Z, NBG)
            dw_acc += dwc
            tl.store(dx_ptr + rows[:, None] * D + cols[None, :], dx.to(dx_ptr.dtype.element_ty), mask=m2)
            if HAS_Z:
                tl.store(dz_ptr + rows[:, None] * D + cols[None, :], dz.to(dz_ptr.dtype.element_ty), mask=m2)
        tl.store(dw_ptr + pid.to(tl.int64) * D + cols, tl.sum(dw_acc, axis=0), mask=cmask)
    else:  # dw_ptr's rows were zeroed: this program adds its tiles' sums to its own row
        for k in tl.static_range(R):
            rows = ((pid * R + k) * BM + tl.arange(0, BM)).to(tl.int64)
            rmask = rows < M
            ss = tl.zeros((BM,), dtype=ACC)
            s2 = tl.zeros((BM,), dtype=ACC)
            for c0 in range(0, N, BN):
                cols = col0 + c0 + tl.arange(0, BN)
                cmask = (c0 + tl.arange(0, BN)) < N
                x, u, gate, dgate, w, m2, dy = _load_bwd_chunk(x_ptr, z_ptr, w_ptr, dy_ptr, rows, rmask, cols, cmask,
                                                               sxm, szm, sdm, HAS_Z, NBG, ACC)
                g = dy
                if HAS_Z and NBG:
                    g = dy * gate
                ss += tl.sum(u * u, axis=1)
                s2 += tl.sum(g * w[None, :] * u, axis=1)
            rstd = tl.rsqrt(ss / N + eps)
            cc = s2 * rstd / N
            for c0 in range(0, N, BN):
                cols = col0 + c0 + tl.arange(0, BN)
                cmask = (c0 + tl.arange(0, BN)) < N
                x, u, gate, dgate, w, m2, dy = _load_bwd_chunk(x_ptr, z_ptr, w_ptr, dy_ptr, rows, rmask, cols, cmask,
                                                               sxm, szm, sdm, HAS_Z, NBG, ACC)
                dx, dz, dwc = _bwd_chunk(x, u, gate, dgate, w, dy, rstd, cc, HAS_Z, NBG)
                tl.store(dx_ptr + rows[:, None] * D + cols[None, :], dx.to(dx_ptr.dtype.element_ty), mask=m2)
                if HAS_Z:
                    tl.store(dz_ptr + rows[:, None] * D + cols[None, :], dz.to(dz_ptr.dtype.element_ty), mask=m2)
                dwp = dw_ptr + pid.to(tl.int64) * D + cols
                tl.store(dwp, tl.load(dwp, mask=cmask, other=0.0) + tl.sum(dwc, axis=0), mask=cmask)


# ---- launchers -----------------------------------------------------------------------------------------------

_alloc = torch.empty  # what the launchers allocate outputs with (tests swap in a NaN fill: unwritten elements fail)

def _blocks(n: int, kind: str, cfg: Optional[tuple] = None):
    """(one_pass, BN, BM, num_warps) for group size n: BN = n rounded up to a power of two when that is at most
    the cap (8192, MAMBA_COMPAT_NORM_BLOCK), else the cap (two passes); BM rows so that a tile holds about
    ELEMS[kind] elements, num_warps one per WARP_ELEMS[kind] of them. MAMBA_COMPAT_NORM_FWD / _BWD="BM,WARPS"
    (read at call time, for tuning) or `cfg` force both."""
    cap = int(os.environ.get("MAMBA_COMPAT_NORM_BLOCK", 8192))
    bn = triton.next_power_of_2(n)
    one_pass = bn <= cap
    bn = min(bn, triton.next_power_of_2(cap))
    forced = cfg or os.environ.get(f"MAMBA_COMPAT_NORM_{kind}")
    if forced:
        bm, warps = (int(v) for v in (forced.split(",") if isinstance(forced, str) else forced))
        return one_pass, bn, bm, warps
    bm = max(1, min(64, ELEMS[kind] // bn))
    warps = 4 if interpreting() else min(max(bm * bn // WARP_ELEMS[kind], 1), 16)
    return one_pass, bn, bm, warps


ELEMS = {"FWD": 4096, "BWD": 2048}  # forward: 3.3-3.9 TB/s on an H200 at the bench shapes; backward untuned
WARP_ELEMS = {"FWD": 512, "BWD": 256}


def _rows_per_program(ntiles: int, ngroups: int, device) -> int:
    """R, the row tiles one backward program walks (unrolled): the most of 16, 8, 4, 2 that still leaves 4
    programs per SM (fewer dweight partials to sum), else 1; 2 under the interpreter."""
    if interpreting() or device.type != "cuda":
        return 2
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    for r in (16, 8, 4, 2):
        if triton.cdiv(ntiles, r) * ngroups >= 4 * sms:
            return r
    return 1


def _acc(dtype) -> tl.dtype:
    return tl.float64 if dtype == torch.float64 else tl.float32


def rmsnorm_fwd(x: Tensor, weight: Tensor, z: Optional[Tensor], eps: float, group_size: int,
                norm_before_gate: bool, cfg: Optional[tuple] = None) -> Tensor:
    """x, z (M, D) with unit column stride, weight (D,) -> (M, D) contiguous in x.dtype."""
    m, d = x.shape
    y = _alloc((m, d), dtype=x.dtype, device=x.device)
    if y.numel() == 0:
        return y
    one_pass, bn, bm, warps = _blocks(group_size, "FWD", cfg)
    _rmsnorm_fwd_kernel[(triton.cdiv(m, bm), d // group_size)](
        x, x if z is None else z, weight, y, m, group_size, x.stride(0), 0 if z is None else z.stride(0),
        y.stride(0), float(eps),
        HAS_Z=z is not None, NBG=bool(norm_before_gate), ONE_PASS=one_pass, ACC=_acc(x.dtype), BM=bm, BN=bn,
        num_warps=warps,
    )
    return y


def rmsnorm_bwd(dy: Tensor, x: Tensor, weight: Tensor, z: Optional[Tensor], eps: float, group_size: int,
                norm_before_gate: bool, cfg: Optional[tuple] = None):
    """-> (dx (M, D) in x.dtype, dweight (D,) in weight.dtype, dz (M, D) in z.dtype or None)."""
    m, d = x.shape
    dev = x.device
    dy = dy if dy.stride(-1) == 1 else dy.contiguous()
    acc_dt = torch.float64 if x.dtype == torch.float64 else torch.float32
    dx = _alloc((m, d), dtype=x.dtype, device=dev)
    dz = _alloc((m, d), dtype=z.dtype, device=dev) if z is not None else None
    one_pass, bn, bm, warps = _blocks(group_size, "BWD", cfg)
    ngroups = d // group_size
    ntiles = triton.cdiv(m, bm)
    r = _rows_per_program(ntiles, ngroups, dev)
    progs = max(1, triton.cdiv(ntiles, r))
    dw_part = (_alloc if one_pass else torch.zeros)((progs, d), dtype=acc_dt, device=dev)
    if m > 0:
        _rmsnorm_bwd_kernel[(progs, ngroups)](
            x, x if z is None else z, weight, dy, dx, dx if dz is None else dz, dw_part, m, group_size, d,
            x.stride(0), 0 if z is None else z.stride(0), dy.stride(0), float(eps),
            HAS_Z=z is not None, NBG=bool(norm_before_gate), ONE_PASS=one_pass, ACC=_acc(x.dtype), BM=bm, BN=bn,
            R=r, num_warps=warps,
        )
    else:
        dw_part.zero_()
    return dx, dw_part.sum(0).to(weight.dtype), dz


# ---- custom ops ----------------------------------------------------------------------------------------------

@torch.library.custom_op("mamba_compat::rmsnorm_gated_fwd_triton", mutates_args=())
def rmsnorm_fwd_op(x: Tensor, weight: Tensor, z: Optional[Tensor], eps: float, group_size: int,
                   norm_before_gate: bool) -> Tensor:
    return rmsnorm_fwd(x, weight, z, eps, group_size, norm_before_gate)


@rmsnorm_fwd_op.register_fake
def _(x, weight, z, eps, group_size, norm_before_gate):
    return x.new_empty(x.shape)


@torch.library.custom_op("mamba_compat::rmsnorm_gated_bwd_triton", mutates_args=())
def rmsnorm_bwd_op(dy: Tensor, x: Tensor, weight: Tensor, z: Optional[Tensor], eps: float, group_size: int,
                   norm_before_gate: bool) -> tuple[Tensor, Tensor, Tensor]:
    dx, dw, dz = rmsnorm_bwd(dy, x, weight, z, eps, group_size, norm_before_gate)
    return dx, dw, (x.new_empty(0) if dz is None else dz)


@rmsnorm_bwd_op.register_fake
def _(dy, x, weight, z, eps, group_size, norm_before_gate):
    return x.new_empty(x.shape), weight.new_empty(weight.shape), (x.new_empty(0) if z is None else z.new_empty(z.shape))


def _setup(ctx, inputs, output):
    x, weight, z, eps, group_size, norm_before_gate = inputs
    ctx.save_for_backward(x, weight, z)
    ctx.params = (eps, group_size, norm_before_gate)


def _backward(ctx, dy):
    x, weight, z = ctx.saved_tensors
    dx, dw, dz = rmsnorm_bwd_op(dy, x, weight, z, *ctx.params)
    return dx, dw, (dz if z is not None else None), None, None, None


rmsnorm_fwd_op.register_autograd(_backward, setup_context=_setup)


def rmsnorm_gated(x, weight, z, eps, group_size, norm_before_gate):
    """The backend entry point on 2-D x, z (M, D) (unit column stride): differentiable in x, weight and z."""
    return rmsnorm_fwd_op(x, weight, z, float(eps), int(group_size), bool(norm_before_gate))
