"""The `triton` SSD backend: our own Triton kernels, registered as torch.library custom ops.

Forward: one launch (triton_fwd.ssd_fwd_kernel), the inter-chunk recurrence carried in registers; for long
sequences with few (batch, head) pairs, chunk-parallel instead (group_split): each group of chunks' own state,
a scan over the groups, then y per group from the state entering it.
Backward: a state pass storing the state entering each chunk, a reverse pass storing the gradient on each of
them (both light; sequential over chunks, or chunk-parallel as the forward), then one chunk-parallel kernel for
every input gradient (triton_bwd), plus small PyTorch sums over heads / batch / chunks.
Runs on CUDA tensors, and on CPU tensors under TRITON_INTERPRET=1 (tests).

    chunk_scan(x (B, L, H, P), dt (B, L, H), A (H,), B/C (B, L, G, N), chunk_size, D (H,)|(H, P), z like x,
               dt_bias (H,), initial_states (B, H, P, N), seq_idx (B, L), dt_softplus, dt_min, dt_max)
        -> (y (B, L, H, P) in x.dtype, final_states (B, H, P, N) fp32)

chunk_size only bounds the kernels' own chunk length Q (a power of two in [16, 64]); the result does
not depend on it.
"""
from __future__ import annotations

import math
import os

import torch

from .custom_op import make_ssd_op
from .triton_bwd import ssd_bwd_kernel, ssd_dstate_kernel
from .triton_common import dot_precision, env_int, pow2_at_least, upcast_dots
from .triton_fwd import ssd_fwd_kernel, state_combine_kernel

__all__ = ["chunk_scan", "ssd_fwd", "ssd_bwd"]


def kernel_chunk(chunk_size: int, seqlen: int, backward: bool = False) -> int:
    """The chunk length the kernels use: a power of two in [16, cap], <= chunk_size where possible.
    cap: 64 (MAMBA_COMPAT_TRITON_QFWD / _QBWD override it for tuning)."""
    cap = env_int("MAMBA_COMPAT_TRITON_QBWD" if backward else "MAMBA_COMPAT_TRITON_QFWD", 64)
    q = 1 << (max(int(chunk_size), 1).bit_length() - 1)  # largest power of two <= chunk_size
    q = min(q, cap, pow2_at_least(seqlen))
    return max(q, 16)


def _flags(D, z, dt_bias, seq_idx, dt_softplus, dt_min, dt_max):
    return dict(HAS_D=D is not None, HAS_Z=z is not None, HAS_DTB=dt_bias is not None,
                HAS_SEQ=seq_idx is not None, SOFTPLUS=bool(dt_softplus),
                CLAMP=(float(dt_min), float(dt_max)) != (0.0, math.inf))


def _common_args(x, dt, B, C, D, z, seq_idx):
    """Strides shared by both kernels; absent tensors get zero strides (their loads are compiled out)."""
    zs = z.stride() if z is not None else (0, 0, 0, 0)
    ss = seq_idx.stride() if seq_idx is not None else (0, 0)
    if D is None:
        ds = (0, 0)
    elif D.dim() == 1:
        ds = (D.stride(0), 0)  # (H,) broadcast over P
    else:
        ds = D.stride()
    return [*x.stride(), *dt.stride(), *B.stride(), *C.stride(), *zs], ss, ds


def group_split(b: int, h: int, p: int, nchunks: int, device, backward: bool = False) -> int:
    """K, the chunks per group of the chunk-parallel passes, or 0 for the sequential ones.

    The sequential forward (and the backward's two state passes) run one program per (head-dim block, b*h), each
    walking every chunk: with few (b, h) and long sequences the GPU runs a couple of programs per SM through a
    long dependent loop. The chunk-parallel form runs each group of K chunks from zero (LOCAL), an elementwise
    scan over the groups (state_combine_kernel), then the groups again from their entry states: twice the
    matmuls of the state update, over ngroups times the programs.
    Chosen when the sequential grid has fewer than SPLIT_PROGRAMS_PER_SM programs per SM and there are at least
    8 chunks, with groups of K chunks for about GROUP_PROGRAMS_PER_SM programs per SM.
    Measured on an H200 (2026-12-02, bf16, b1 L32768 H32 N128, 64 sequential programs): forward 3.13 ms
    sequential, 1.28 / 1.08 / 1.02 ms at K = 8 / 16 / 32 (the target 8 per SM gives K = 31), 3.51 ms at K = 1
    (the scan over 512 groups dominates); forward+backward 5.98 ms sequential, 4.83 ms at K = 32.
    MAMBA_COMPAT_TRITON_FWD_SPLIT / _BWD_SPLIT = K forces K (0 = never split)."""
    forced = os.environ.get("MAMBA_COMPAT_TRITON_BWD_SPLIT" if backward else "MAMBA_COMPAT_TRITON_FWD_SPLIT")
    if forced is not None:
        k = int(forced)
        return k if 0 < k < nchunks else 0
    if device.type != "cuda" or nchunks < 8:
        return 0
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    programs = b * h * triton_cdiv(p, 32)
    if programs >= SPLIT_PROGRAMS_PER_SM * sms:
        return 0
    groups = min(nchunks, triton_cdiv(GROUP_PROGRAMS_PER_SM * sms, programs))
    return triton_cdiv(nchunks, groups)


SPLIT_PROGRAMS_PER_SM = env_int("MAMBA_COMPAT_TRITON_SPLIT_BELOW", 1)
GROUP_PROGRAMS_PER_SM = env_int("MAMBA_COMPAT_TRITON_GROUP_TARGET", 8)


def _fwd_launch(x, dt, A, B, C, D, z, dt_bias, init, seq_idx, dt_softplus, dt_min, dt_max, q, precision, y, final,
                states=None, groups=None, k=1, mode="seq"):
    """One launch of ssd_fwd_kernel. mode "seq": sequential over all chunks from `init` (y and final, or with
    `states` the state entering every chunk); "local": each group of k chunks from zero into `groups`
    (gstates, gdecay); "split": y (or, with `states`, every chunk's entry state) per group, from gstates."""
    b, L, h, p = x.shape
    n = B.shape[3]
    strides, ss, ds = _common_args(x, dt, B, C, D, z, seq_idx)
    ys = y.stride() if y is not None else (0, 0, 0, 0)
    split = mode != "seq"
    ngroups = triton_cdiv(triton_cdiv(L, q), k) if split else 1
    gstates, gdecay = groups if groups is not None else (final, final)
    grid = lambda meta: (triton_cdiv(p, meta["BP"]), b * h, ngroups)  # noqa: E731
    dummy = x
    ssd_fwd_kernel[grid](
        x, dt, A, B, C, _or(D, dummy), _or(z, dummy), _or(dt_bias, dummy), _or(init, dummy), _or(seq_idx, dummy),
        _or(y, dummy), final, _or(states, final), gstates, gdecay,
        L, h, p, n, h // B.shape[2], float(dt_min), float(dt_max),
        *strides, *ys, *ss, *ds,
        HAS_INIT=init is not None, COMPUTE_Y=y is not None and mode != "local",
        STORE_STATES=states is not None and mode != "local", SPLIT=split, LOCAL=mode == "local", K=k,
        Q=q, BN=pow2_at_least(n), DOT_PREC=precision, UPCAST=upcast_dots(x.dtype),
        **_flags(D, z, dt_bias, seq_idx, dt_softplus, dt_min, dt_max),
    )


def _group_buffers(bh, nchunks, k, p, n, device):
    """(gstates (B*H, ngroups, P, N), gdecay (B*H, ngroups)), fp32, for the chunk-parallel passes."""
    ng = triton_cdiv(nchunks, k)
    return (torch.empty((bh, ng, p, n), dtype=torch.float32, device=device),
            torch.empty((bh, ng), dtype=torch.float32, device=device))


def _combine(groups, init, final, reverse):
    """state_combine_kernel over every (b, h): group own-states -> entry states (in place), final out."""
    gstates, gdecay = groups
    bh, ng, p, n = gstates.shape
    block = min(1024, pow2_at_least(p * n))
    state_combine_kernel[(triton_cdiv(p * n, block), bh)](
        gstates, gdecay, _or(init, final), final, p * n, ng, HAS_INIT=init is not None, REVERSE=reverse,
        BLOCK=block, num_warps=4)


def ssd_fwd(x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states, seq_idx, dt_softplus, dt_min, dt_max,
            states=None):
    """Forward. With `states` (B*H, nchunks + 1, P, N) given (fp32, or x.dtype for 16-bit x), run the
    backward's state pass instead: no y; the state entering each chunk and the final one are written there.
    Returns (y (B, L, H, P) or None, final_states (B, H, P, N) fp32)."""
    b, L, h, p = x.shape
    n = B.shape[3]
    backward = states is not None
    q = kernel_chunk(chunk_size, L, backward=backward)
    precision = dot_precision(x.dtype, backward=backward)
    A = A.contiguous()
    dt_bias = dt_bias.contiguous() if dt_bias is not None else None
    init = initial_states.contiguous() if initial_states is not None else None
    final = torch.empty((b, h, p, n), dtype=torch.float32, device=x.device)
    args = (x, dt, A, B, C, D, z, dt_bias, init, seq_idx, dt_softplus, dt_min, dt_max, q, precision)
    y = None if backward else torch.empty((b, L, h, p), dtype=x.dtype, device=x.device)
    nchunks = triton_cdiv(L, q)
    k = group_split(b, h, p, nchunks, x.device, backward=backward)
    if k:  # each group's own state, the entry states by a scan over groups, then the groups from them
        groups = _group_buffers(b * h, nchunks, k, p, n, x.device)
        _fwd_launch(*args, None, final, None, groups, k, "local")
        _combine(groups, init, final, reverse=False)
        _fwd_launch(*args, y, final, states, groups, k, "split")
    else:
        _fwd_launch(*args, y, final, states)
    return y, final


def ssd_bwd(dy, dfinal, x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states, seq_idx, dt_softplus,
            dt_min, dt_max):
    """Gradients (dx, ddt, dA, dB, dC, dD, dz, ddt_bias, dinitial_states); None where the input is None."""
    b, L, h, p = x.shape
    g, n = B.shape[2], B.shape[3]
    q = kernel_chunk(chunk_size, L, backward=True)
    nchunks = -(-L // q)
    dev = x.device
    A = A.contiguous()  # the kernels index A and dt_bias by head
    dt_bias = dt_bias.contiguous() if dt_bias is not None else None
    half = x.dtype in (torch.bfloat16, torch.float16)
    # chunk-entry states: in the input dtype for 16-bit inputs (the reverse sweep multiplies them in it anyway)
    states = torch.empty((b * h, nchunks + 1, p, n), dtype=x.dtype if half else torch.float32, device=dev)
    # 1. states entering each chunk (sequential, light)
    ssd_fwd(x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states, seq_idx, dt_softplus, dt_min, dt_max,
            states=states)

    dy = dy.contiguous() if dy.stride(-1) != 1 else dy
    dfin = dfinal.contiguous() if dfinal is not None else None
    flags = _flags(D, z, dt_bias, seq_idx, dt_softplus, dt_min, dt_max)
    zs = z.stride() if z is not None else (0, 0, 0, 0)
    ss = seq_idx.stride() if seq_idx is not None else (0, 0)
    # 2. state gradients entering each chunk (sequential, light)
    dstates = torch.empty_like(states)
    dinit = torch.empty((b, h, p, n), dtype=torch.float32, device=dev)
    k = group_split(b, h, p, nchunks, dev, backward=True)
    groups = _group_buffers(b * h, nchunks, k, p, n, dev) if k else (dinit, dinit)

    def dstate_launch(mode):
        ng = triton_cdiv(nchunks, k) if mode != "seq" else 1
        ssd_dstate_kernel[lambda meta: (triton_cdiv(p, meta["BP"]), b * h, ng)](
            dt, A, C, _or(z, dy), _or(dt_bias, dy), _or(seq_idx, dy), dy, _or(dfin, dinit), dstates, dinit, *groups,
            L, h, p, n, h // g, float(dt_min), float(dt_max),
            *dt.stride(), *C.stride(), *zs, *dy.stride(), *ss,
            HAS_Z=flags["HAS_Z"], HAS_DTB=flags["HAS_DTB"], HAS_DFINAL=dfin is not None, HAS_SEQ=flags["HAS_SEQ"],
            SOFTPLUS=flags["SOFTPLUS"], CLAMP=flags["CLAMP"], SPLIT=mode != "seq", LOCAL=mode == "local",
            K=max(k, 1), Q=q, BN=pow2_at_least(n),
            DOT_PREC=dot_precision(x.dtype, backward=True), UPCAST=upcast_dots(x.dtype),
        )

    if k:  # chunk-parallel, as the forward's (group_split)
        dstate_launch("local")
        _combine(groups, dfin, dinit, reverse=True)
        dstate_launch("split")
    else:
        dstate_launch("seq")
    # 3. every gradient, one program per (chunk, batch*head)
    dx = torch.empty((b, L, h, p), dtype=x.dtype, device=dev)
    ddt = torch.empty((b, L, h), dtype=torch.float32, device=dev)
    # per head, summed over the group below; bf16 partials for bf16 inputs (fp16 could overflow)
    part = torch.bfloat16 if (x.dtype == torch.bfloat16 and h != g) else torch.float32
    dB_h = torch.empty((b, L, h, n), dtype=part, device=dev)
    dC_h = torch.empty((b, L, h, n), dtype=part, device=dev)
    dz = torch.empty((b, L, h, p), dtype=z.dtype, device=dev) if z is not None else None
    dA_bh = torch.empty((b * h, nchunks), dtype=torch.float32, device=dev)
    dD_bh = torch.empty((b * h, nchunks, p), dtype=torch.float32, device=dev)
    strides, ss, ds = _common_args(x, dt, B, C, D, z, seq_idx)
    ssd_bwd_kernel[(nchunks, b * h)](
        x, dt, A, B, C, _or(D, x), _or(z, x), _or(dt_bias, x), _or(seq_idx, x), dy, states, dstates,
        dx, ddt, dB_h, dC_h, _or(dz, dx), dA_bh, dD_bh,
        L, h, p, n, h // g, float(dt_min), float(dt_max),
        *strides, *dy.stride(), *ss, *ds,
        Q=q, BP=pow2_at_least(p), BN=pow2_at_least(n),
        DOT_PREC=dot_precision(x.dtype, backward=True), UPCAST=upcast_dots(x.dtype), **flags,
    )
    dB = dB_h.view(b, L, g, h // g, n).sum(3, dtype=torch.float32) if h != g else dB_h  # (B, L, G, N)
    dC = dC_h.view(b, L, g, h // g, n).sum(3, dtype=torch.float32) if h != g else dC_h
    dA = dA_bh.view(b, h, nchunks).sum((0, 2))
    dD = None
    if D is not None:
        dD = dD_bh.view(b, h, nchunks, p).sum((0, 2))
        dD = dD.sum(1) if D.dim() == 1 else dD
    ddt_bias = ddt.sum((0, 1)) if dt_bias is not None else None
    dinit_out = dinit if initial_states is not None else None
    return dx, ddt, dA, dB, dC, dD, dz, ddt_bias, dinit_out


def triton_cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _or(t, default):
    return default if t is None else t


_fwd_op, _bwd_op = make_ssd_op("triton", lambda *a: ssd_fwd(*a), ssd_bwd, device_types=None)


def chunk_scan(x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None, initial_states=None, seq_idx=None,
               dt_softplus=False, dt_min=0.0, dt_max=math.inf):
    """The backend entry point (see the module docstring); differentiable in every tensor input."""
    return _fwd_op(x, dt, A, B, C, int(chunk_size), D, z, dt_bias, initial_states, seq_idx, bool(dt_softplus),
                   float(dt_min), float(dt_max))
