"""Causal depthwise conv1d (Mamba-2's xBC conv) as Triton kernels, registered as torch.library custom ops.

Semantics are reference.py's (x (B, L, C) read through its strides, e.g. a slice of in_proj's output;
weight (C, W); bias (C,); conv_state (B, C, W) any strides, only its last W-1 columns read and rounded to
x's dtype; seg (B, L) segment ids, the window being segment 0), plus an optional fused SiLU. Arithmetic is
fp32 (fp64 for fp64 inputs); y is (B, L, C) contiguous in x.dtype.

Forward (`_conv_fwd_kernel`): one program per (BT time steps, BC channels, batch row). The W taps are W
loads of the (BT, BC) tile shifted back by 0..W-1 rows: the W-1 halo rows are the previous block's and come
from L1/L2, so DRAM sees x about once.
Backward (`_conv_bwd_kernel`): one program per (NT tiles of BT input rows t', BC channels, batch row), the
tiles unrolled. With g = dy * silu'(a) (a = the recomputed pre-activation; g = dy without SiLU), for each
of the W output rows t' + j that input row t' feeds (a (BT, BC) tile shifted by j):
    dx[t']                 = sum_j w[W-1-j] g[t'+j] [seg[t'+j] == seg[t']]
    dweight[:, W-1-j]     += sum_t' g[t'+j] x[t'] [...]          (per-program partial sums, fp32)
    dbias                 += sum_t' g[t']
The recompute of a at the shifted rows takes W shifted x tiles each (W^2 tile loads, from L1/L2). With an
initial window the rows t' start at -(W-1): those rows are the window's columns W+t' and their dx is
d(conv_state). The partial sums (B * programs along time, W, C) are summed in PyTorch.
Decode (`_conv_update_kernel`): one program per (BC channels, batch row): shift the window in place
(any strides), out = conv + bias (+ SiLU). One launch, no autograd (like upstream's causal_conv1d_update).

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

__all__ = ["conv1d_fwd", "conv1d_bwd", "conv1d_update", "causal_conv1d", "causal_conv1d_update"]


@triton.jit
def _sig(a):
    return 1.0 / (1.0 + tl.exp(-a))


@triton.jit
def _load_in(x_base, st_base, s, c, cmask, L, sxl, sxc, ssc, ssw, W: tl.constexpr, HAS_STATE: tl.constexpr,
             ACC: tl.constexpr):
    """Inputs at times s (BT,) for channels c (BC,) -> (BT, BC) in ACC: x[s] for 0 <= s < L, the window's column
    W + s for -W < s < 0 (rounded to x's dtype first, as the reference does), else 0."""
    m = (s >= 0) & (s < L)
    v = tl.load(x_base + s.to(tl.int64)[:, None] * sxl + c[None, :] * sxc, mask=m[:, None] & cmask[None, :],
                other=0.0).to(ACC)
    if HAS_STATE:
        ms = (s < 0) & (s > -W)
        sv = tl.load(st_base + c[None, :] * ssc + (s + W)[:, None] * ssw, mask=ms[:, None] & cmask[None, :],
                     other=0.0)
        v += sv.to(x_base.dtype.element_ty).to(ACC)
    return v


@triton.jit
def _load_seg(seg_base, s, L, sgl):
    """Segment ids at times s (BT,) (any shape): seg[s] for 0 <= s < L; 0 (the window's segment) before."""
    return tl.load(seg_base + s.to(tl.int64) * sgl, mask=(s >= 0) & (s < L), other=0)


@triton.jit
def _conv_fwd_kernel(
    x_ptr, w_ptr, b_ptr, st_ptr, seg_ptr, y_ptr, dy_ptr,
    L, C,
    sxb, sxl, sxc, swc, sww, ssb, ssc, ssw, sgb, sgl, syb, syl, sdb, sdl, sdc,
    W: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_STATE: tl.constexpr, HAS_SEG: tl.constexpr, SILU: tl.constexpr,
    ACC: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr, GRAD: tl.constexpr,
):
    # GRAD (with SILU): instead of y, write g = dy * silu'(a) at the pre-activation a (the two-pass backward's
    # first pass; y_ptr is then an ACC buffer)
    pid_t = tl.program_id(0)
    pid_c = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    t = pid_t * BT + tl.arange(0, BT)
    c = pid_c * BC + tl.arange(0, BC)
    cmask = c < C
    tmask = t < L
    x_base = x_ptr + b * sxb
    st_base = st_ptr + b * ssb
    seg_base = seg_ptr + b * sgb
    if HAS_SEG:
        seg_t = _load_seg(seg_base, t, L, sgl)
    acc = tl.zeros((BT, BC), dtype=ACC)
    if HAS_BIAS:
        acc += tl.load(b_ptr + c, mask=cmask, other=0.0).to(ACC)[None, :]
    for i in tl.static_range(W):  # tap i sees the input W-1-i steps back
        s = t - (W - 1 - i)
        v = _load_in(x_base, st_base, s, c, cmask, L, sxl, sxc, ssc, ssw, W, HAS_STATE, ACC)
        if HAS_SEG and i < W - 1:
            v = tl.where((_load_seg(seg_base, s, L, sgl) == seg_t)[:, None], v, 0.0)
        wi = tl.load(w_ptr + c * swc + i * sww, mask=cmask, other=0.0).to(ACC)
        acc += v * wi[None, :]
    if GRAD:
        sg = _sig(acc)
        dy = tl.load(dy_ptr + b * sdb + t.to(tl.int64)[:, None] * sdl + c[None, :] * sdc,
                     mask=tmask[:, None] & cmask[None, :], other=0.0).to(ACC)
        acc = dy * sg * (1.0 + acc * (1.0 - sg))
    elif SILU:
        acc = acc * _sig(acc)
    y_ptrs = y_ptr + b * syb + t.to(tl.int64)[:, None] * syl + c[None, :]
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=tmask[:, None] & cmask[None, :])


@triton.jit
def _conv_bwd_kernel(
    x_ptr, w_ptr, b_ptr, st_ptr, seg_ptr, dy_ptr, dx_ptr, dst_ptr, dw_ptr, db_ptr,
    L, C, NPT,
    sxb, sxl, sxc, swc, sww, ssb, ssc, ssw, sgb, sgl, sdb, sdl, sdc,
    W: tl.constexpr, BW: tl.constexpr, OFF: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_STATE: tl.constexpr,
    HAS_SEG: tl.constexpr, SILU: tl.constexpr, ACC: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr,
    NT: tl.constexpr,
):
    # OFF: W - 1 with a window (rows t' start at -(W-1): the window's columns), else 0. NT tiles of BT rows per
    # program, unrolled.
    pid_t = tl.program_id(0)
    pid_c = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    c = pid_c * BC + tl.arange(0, BC)
    cmask = c < C
    wrow = tl.arange(0, BW)  # dweight's taps
    x_base = x_ptr + b * sxb
    st_base = st_ptr + b * ssb
    seg_base = seg_ptr + b * sgb
    dy_base = dy_ptr + b * sdb
    bias = tl.zeros((BC,), dtype=ACC)
    if HAS_BIAS and SILU:
        bias = tl.load(b_ptr + c, mask=cmask, other=0.0).to(ACC)
    dw_acc = tl.zeros((BW, BC), dtype=ACC)
    db_acc = tl.zeros((BC,), dtype=ACC)
    for k in tl.static_range(NT):
        tp = (pid_t * NT + k) * BT - OFF + tl.arange(0, BT)  # input rows t' of this tile
        x0 = _load_in(x_base, st_base, tp, c, cmask, L, sxl, sxc, ssc, ssw, W, HAS_STATE, ACC)  # (BT, BC)
        if HAS_SEG:
            seg_in = _load_seg(seg_base, tp, L, sgl)
        dx = tl.zeros((BT, BC), dtype=ACC)
        for j in tl.static_range(W):  # output rows t' + j, reached through tap W-1-j
            to = tp + j
            om = (to >= 0) & (to < L)
            g = tl.load(dy_base + to.to(tl.int64)[:, None] * sdl + c[None, :] * sdc,
                        mask=om[:, None] & cmask[None, :], other=0.0).to(ACC)
            if HAS_SEG:
                seg_o = _load_seg(seg_base, to, L, sgl)
            if SILU:  # the pre-activation at rows t' + j, recomputed from W shifted input tiles
                a = tl.zeros((BT, BC), dtype=ACC) + bias[None, :]
                for i in tl.static_range(W):
                    sh = j - (W - 1) + i  # tap i of output row t' + j reads input row t' + sh
                    if sh == 0:
                        xs = x0
                    else:
                        xs = _load_in(x_base, st_base, tp + sh, c, cmask, L, sxl, sxc, ssc, ssw, W, HAS_STATE, ACC)
                    if HAS_SEG and i < W - 1:
                        xs = tl.where((_load_seg(seg_base, tp + sh, L, sgl) == seg_o)[:, None], xs, 0.0)
                    a += xs * tl.load(w_ptr + c * swc + i * sww, mask=cmask, other=0.0).to(ACC)[None, :]
                sg = _sig(a)
                g = g * sg * (1.0 + a * (1.0 - sg))
            if j == 0:
                db_acc += tl.sum(g, axis=0)
            if HAS_SEG and j > 0:
                g = tl.where((seg_o == seg_in)[:, None], g, 0.0)
            wj = tl.load(w_ptr + c * swc + (W - 1 - j) * sww, mask=cmask, other=0.0).to(ACC)
            dx += g * wj[None, :]
            dw_acc += tl.where((wrow == W - 1 - j)[:, None], tl.sum(g * x0, axis=0)[None, :], 0.0)
        rm = (tp >= 0) & (tp < L)
        tl.store(dx_ptr + b * L * C + tp.to(tl.int64)[:, None] * C + c[None, :], dx.to(dx_ptr.dtype.element_ty),
                 mask=rm[:, None] & cmask[None, :])
        if HAS_STATE:  # rows t' < 0: the window's columns W + t', an fp32 (B, C, W) buffer
            sm = (tp < 0) & (tp > -W)
            tl.store(dst_ptr + b * C * W + c[None, :] * W + (tp + W)[:, None], dx, mask=sm[:, None] & cmask[None, :])
    part = b * NPT + pid_t
    tl.store(dw_ptr + part * W * C + wrow[:, None] * C + c[None, :], dw_acc, mask=(wrow < W)[:, None] & cmask[None, :])
    if HAS_BIAS:
        tl.store(db_ptr + part * C + c, db_acc, mask=cmask)


@triton.jit
def _conv_update_kernel(
    x_ptr, st_ptr, w_ptr, b_ptr, y_ptr,
    C, sxb, sxc, ssb, ssc, ssw, swc, sww, syb,
    W: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr, ACC: tl.constexpr, BC: tl.constexpr,
):
    pid_c = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    c = pid_c * BC + tl.arange(0, BC)
    cmask = c < C
    st = st_ptr + b * ssb + c * ssc
    sdt = st_ptr.dtype.element_ty
    xn = tl.load(x_ptr + b * sxb + c * sxc, mask=cmask, other=0.0).to(sdt)  # the window holds its own dtype
    acc = xn.to(ACC) * tl.load(w_ptr + c * swc + (W - 1) * sww, mask=cmask, other=0.0).to(ACC)
    for k in tl.static_range(W - 1):  # column k + 1 moves to column k
        v = tl.load(st + (k + 1) * ssw, mask=cmask, other=0.0)
        acc += v.to(ACC) * tl.load(w_ptr + c * swc + k * sww, mask=cmask, other=0.0).to(ACC)
        tl.store(st + k * ssw, v, mask=cmask)
    tl.store(st + (W - 1) * ssw, xn, mask=cmask)
    if HAS_BIAS:
        acc += tl.load(b_ptr + c, mask=cmask, other=0.0).to(ACC)
    if SILU:
        acc = acc * _sig(acc)
    tl.store(y_ptr + b * syb + c, acc.to(y_ptr.dtype.element_ty), mask=cmask)


# ---- launchers -----------------------------------------------------------------------------------------------

_alloc = torch.empty  # what the launchers allocate outputs with (tests swap in a NaN fill: unwritten elements fail)

def _cfg(kind: str, default: tuple) -> tuple:
    """(BT, BC, num_warps) of the forward / backward kernel: MAMBA_COMPAT_CONV_FWD / _BWD="BT,BC,WARPS" (read at
    call time, for tuning) or the default. Under the interpreter small tiles (it runs each program in numpy)."""
    forced = os.environ.get(f"MAMBA_COMPAT_CONV_{kind}")
    if forced:
        bt, bc, warps = (int(v) for v in forced.split(","))
        return bt, bc, warps
    return (16, 32, 4) if interpreting() else default


FWD_CFG = (16, 256, 4)  # the best of 40 configs on an H200 (b8 L2048 C2304 bf16: 67 us, 2.25 TB/s)
BWD_CFG = (16, 128, 4)  # not measured on a GPU yet (MAMBA_COMPAT_CONV_BWD to tune)
TWO_PASS_SILU = False  # see conv1d_bwd; not measured on a GPU yet (MAMBA_COMPAT_CONV_BWD_SILU to tune)


def _acc(dtype) -> tl.dtype:
    return tl.float64 if dtype == torch.float64 else tl.float32


def _acc_torch(dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _two_pass_silu(x: Tensor) -> bool:
    """Whether the SiLU backward runs as two passes: MAMBA_COMPAT_CONV_BWD_SILU=two-pass / fused (read at call
    time, for tuning), else TWO_PASS_SILU."""
    forced = os.environ.get("MAMBA_COMPAT_CONV_BWD_SILU")
    if forced:
        if forced not in ("two-pass", "fused"):
            raise ValueError(f"MAMBA_COMPAT_CONV_BWD_SILU must be 'two-pass' or 'fused', got {forced!r}")
        return forced == "two-pass"
    return TWO_PASS_SILU


def _state_args(x, conv_state, seg):
    st = conv_state if conv_state is not None else x
    ss = conv_state.stride() if conv_state is not None else (0, 0, 0)
    sg = seg.stride() if seg is not None else (0, 0)
    return st, ss, (x if seg is None else seg), sg


def _bwd_tiles_per_program(b: int, rows: int, c: int, bt: int, bc: int, device) -> int:
    """NT, the BT-row tiles one backward program walks (unrolled): the most of 8, 4, 2 that still leaves 16
    programs per SM (fewer dweight partials to sum), else 1; 2 under the interpreter; MAMBA_COMPAT_CONV_BWD_NT
    forces it."""
    if os.environ.get("MAMBA_COMPAT_CONV_BWD_NT"):  # read at call time, for tuning
        return int(os.environ["MAMBA_COMPAT_CONV_BWD_NT"])
    if interpreting() or device.type != "cuda":
        return 2
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    per_tile_row = b * triton.cdiv(c, bc)
    for nt in (8, 4, 2):
        if triton.cdiv(triton.cdiv(rows, bt), nt) * per_tile_row >= 16 * sms:
            return nt
    return 1


def conv1d_fwd(x: Tensor, weight: Tensor, bias: Optional[Tensor], conv_state: Optional[Tensor],
               seg: Optional[Tensor], silu: bool, cfg: Optional[tuple] = None) -> Tensor:
    """x (B, L, C) any strides, weight (C, W), bias (C,) or None, conv_state (B, C, W) or None, seg (B, L) or None
    -> y (B, L, C) contiguous in x.dtype (SiLU applied when silu)."""
    b, L, c = x.shape
    y = _alloc((b, L, c), dtype=x.dtype, device=x.device)
    if y.numel() == 0:
        return y
    _launch_fwd(x, weight, bias, conv_state, seg, silu, y, None, cfg or _cfg("FWD", FWD_CFG))
    return y


def _launch_fwd(x, weight, bias, conv_state, seg, silu, y, dy, cfg):
    """The forward kernel into y (B, L, C) contiguous; with dy, g = dy * silu'(pre-activation) instead."""
    b, L, c = x.shape
    st, ss, sgt, sg = _state_args(x, conv_state, seg)
    bt, bc, warps = cfg
    _conv_fwd_kernel[(triton.cdiv(L, bt), triton.cdiv(c, bc), b)](
        x, weight, x if bias is None else bias, st, sgt, y, x if dy is None else dy, L, c,
        *x.stride(), *weight.stride(), *ss, *sg, y.stride(0), y.stride(1), *(dy.stride() if dy is not None else (0, 0, 0)),
        W=weight.shape[1], HAS_BIAS=bias is not None, HAS_STATE=conv_state is not None, HAS_SEG=seg is not None,
        SILU=bool(silu), ACC=_acc(x.dtype), BT=bt, BC=bc, GRAD=dy is not None, num_warps=warps,
    )


def conv1d_bwd(dy: Tensor, x: Tensor, weight: Tensor, bias: Optional[Tensor], conv_state: Optional[Tensor],
               seg: Optional[Tensor], silu: bool, cfg: Optional[tuple] = None, two_pass: Optional[bool] = None):
    """-> (dx (B, L, C) in x.dtype, dweight (C, W) in weight.dtype, dbias (C,) or None, d conv_state (B, C, W) in
    conv_state.dtype (column 0 zero) or None).

    With SiLU, two_pass (default: _two_pass_silu) first writes g = dy * silu'(a) to an ACC buffer (the forward
    kernel, W tile loads per tile) and runs the backward kernel on g without SiLU, instead of recomputing a at
    each of the W shifted rows inside it (W^2 tile loads per tile)."""
    b, L, c = x.shape
    w = weight.shape[1]
    dev = x.device
    if silu and x.numel() > 0 and (_two_pass_silu(x) if two_pass is None else two_pass):
        g = _alloc((b, L, c), dtype=_acc_torch(x.dtype), device=dev)  # (B, L, C)
        _launch_fwd(x, weight, bias, conv_state, seg, True, g, dy, _cfg("FWD", FWD_CFG))
        dy, silu = g, False
    off = w - 1 if conv_state is not None else 0
    bt, bc, warps = cfg or _cfg("BWD", BWD_CFG)
    nt = _bwd_tiles_per_program(b, L + off, c, bt, bc, dev)
    npt = triton.cdiv(L + off, nt * bt)
    acc_dt = _acc_torch(x.dtype)
    dx = _alloc((b, L, c), dtype=x.dtype, device=dev)
    dw_part = _alloc((b * npt, w, c), dtype=acc_dt, device=dev)
    db_part = _alloc((b * npt, c), dtype=acc_dt, device=dev) if bias is not None else None
    dst = torch.zeros((b, c, w), dtype=acc_dt, device=dev) if conv_state is not None else None
    if x.numel() == 0:
        dw_part.zero_()
        if db_part is not None:
            db_part.zero_()
    else:
        st, ss, sgt, sg = _state_args(x, conv_state, seg)
        _conv_bwd_kernel[(npt, triton.cdiv(c, bc), b)](
            x, weight, x if bias is None else bias, st, sgt, dy, dx, dw_part if dst is None else dst, dw_part,
            dw_part if db_part is None else db_part, L, c, npt,
            *x.stride(), *weight.stride(), *ss, *sg, *dy.stride(),
            W=w, BW=triton.next_power_of_2(w), OFF=off, HAS_BIAS=bias is not None, HAS_STATE=conv_state is not None,
            HAS_SEG=seg is not None, SILU=bool(silu), ACC=_acc(x.dtype), BT=bt, BC=bc, NT=nt, num_warps=warps,
        )
    dweight = dw_part.sum(0).t().to(weight.dtype)
    dbias = db_part.sum(0).to(bias.dtype) if bias is not None else None
    dstate = dst.to(conv_state.dtype) if conv_state is not None else None
    return dx, dweight, dbias, dstate


def conv1d_update(x: Tensor, conv_state: Tensor, weight: Tensor, bias: Optional[Tensor], silu: bool) -> Tensor:
    """One decode step: x (B, C) any strides; conv_state (B, C, W) any strides, shifted in place (x enters as the
    last column, in the window's dtype) -> out (B, C) in x.dtype = conv + bias (SiLU applied when silu)."""
    b, c = x.shape
    w = weight.shape[1]
    y = _alloc((b, c), dtype=x.dtype, device=x.device)
    if y.numel() == 0:
        return y
    bc = 32 if interpreting() else min(1024, max(64, triton.next_power_of_2(triton.cdiv(c, 4))))
    _conv_update_kernel[(triton.cdiv(c, bc), b)](
        x, conv_state, weight, x if bias is None else bias, y,
        c, *x.stride(), *conv_state.stride(), *weight.stride(), y.stride(0),
        W=w, HAS_BIAS=bias is not None, SILU=bool(silu), ACC=_acc(x.dtype), BC=bc,
        num_warps=4 if bc >= 512 else (2 if bc >= 128 else 1),
    )
    return y


# ---- custom ops ----------------------------------------------------------------------------------------------

@torch.library.custom_op("mamba_compat::conv1d_fwd_triton", mutates_args=())
def conv1d_fwd_op(x: Tensor, weight: Tensor, bias: Optional[Tensor], conv_state: Optional[Tensor],
                  seg: Optional[Tensor], silu: bool) -> Tensor:
    return conv1d_fwd(x, weight, bias, conv_state, seg, silu)


@conv1d_fwd_op.register_fake
def _(x, weight, bias, conv_state, seg, silu):
    return x.new_empty(x.shape)


@torch.library.custom_op("mamba_compat::conv1d_bwd_triton", mutates_args=())
def conv1d_bwd_op(dy: Tensor, x: Tensor, weight: Tensor, bias: Optional[Tensor], conv_state: Optional[Tensor],
                  seg: Optional[Tensor], silu: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    dx, dw, db, dst = conv1d_bwd(dy, x, weight, bias, conv_state, seg, silu)
    return dx, dw, (x.new_empty(0) if db is None else db), (x.new_empty(0) if dst is None else dst)


@conv1d_bwd_op.register_fake
def _(dy, x, weight, bias, conv_state, seg, silu):
    return (x.new_empty(x.shape), weight.new_empty(weight.shape),
            x.new_empty(0) if bias is None else bias.new_empty(bias.shape),
            x.new_empty(0) if conv_state is None else conv_state.new_empty(conv_state.shape))


def _setup(ctx, inputs, output):
    x, weight, bias, conv_state, seg, silu = inputs
    ctx.save_for_backward(x, weight, bias, conv_state, seg)
    ctx.silu = silu


def _backward(ctx, dy):
    x, weight, bias, conv_state, seg = ctx.saved_tensors
    dx, dw, db, dst = conv1d_bwd_op(dy, x, weight, bias, conv_state, seg, ctx.silu)
    return dx, dw, (db if bias is not None else None), (dst if conv_state is not None else None), None, None


conv1d_fwd_op.register_autograd(_backward, setup_context=_setup)


@torch.library.custom_op("mamba_compat::conv1d_update_triton", mutates_args=("conv_state",))
def conv1d_update_op(x: Tensor, conv_state: Tensor, weight: Tensor, bias: Optional[Tensor], silu: bool) -> Tensor:
    return conv1d_update(x, conv_state, weight, bias, silu)


@conv1d_update_op.register_fake
def _(x, conv_state, weight, bias, silu):
    return x.new_empty(x.shape)


def causal_conv1d(x, weight, bias=None, conv_state=None, seg=None, silu=False):
    """The backend entry point: differentiable in x, weight, bias and conv_state."""
    return conv1d_fwd_op(x, weight, bias, conv_state, seg, bool(silu))


def causal_conv1d_update(x, conv_state, weight, bias=None, silu=False):
    """The decode entry point (not differentiable). Eagerly the kernel is launched directly (the least host
    time per token); under torch.compile through the registered op, which declares the in-place write."""
    if torch.compiler.is_compiling():
        return conv1d_update_op(x, conv_state, weight, bias, bool(silu))
    return conv1d_update(x, conv_state, weight, bias, bool(silu))
