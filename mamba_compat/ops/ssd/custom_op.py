"""One factory that turns a backend's (forward, backward) pair into torch.library custom ops.

Every fast backend (reference, triton, metal) provides
    fwd(x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states, seq_idx, dt_softplus, dt_min, dt_max)
        -> (y (B, L, H, P) in x.dtype, final_states (B, H, P, N) float32; float64 for float64 x)
    bwd(dy, dfinal, x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states, seq_idx, dt_softplus,
        dt_min, dt_max)
        -> (dx, ddt, dA, dB, dC, dD, dz, ddt_bias, dinitial_states); an entry is None where the input was None
and this module registers `mamba_compat::ssd_fwd_<name>` / `ssd_bwd_<name>` with fake (meta) kernels and
autograd, so `torch.compile(fullgraph=True)` sees one opaque op per direction and `opcheck` passes.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor

def make_ssd_op(name: str, fwd: Callable, bwd: Callable, device_types=None):
    """Register the pair and return `apply(...) -> (y, final_states)` that autograd differentiates."""
    qual = f"mamba_compat::ssd_fwd_{name}"
    qual_bwd = f"mamba_compat::ssd_bwd_{name}"

    @torch.library.custom_op(qual, mutates_args=(), device_types=device_types)
    def fwd_op(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, chunk_size: int,
               D: Optional[Tensor], z: Optional[Tensor], dt_bias: Optional[Tensor],
               initial_states: Optional[Tensor], seq_idx: Optional[Tensor], dt_softplus: bool,
               dt_min: float, dt_max: float) -> tuple[Tensor, Tensor]:
        y, final = fwd(x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states, seq_idx, dt_softplus,
                       dt_min, dt_max)
        return y.contiguous(), final.contiguous()  # the fake kernels promise contiguous outputs

    @fwd_op.register_fake
    def _fwd_fake(x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states, seq_idx, dt_softplus, dt_min, dt_max):
        b, _, h, p = x.shape
        n = B.shape[-1]
        state_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        return x.new_empty(x.shape), x.new_empty((b, h, p, n), dtype=state_dtype)

    @torch.library.custom_op(qual_bwd, mutates_args=(), device_types=device_types)
    def bwd_op(dy: Tensor, dfinal: Optional[Tensor], x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor,
               chunk_size: int, D: Optional[Tensor], z: Optional[Tensor], dt_bias: Optional[Tensor],
               initial_states: Optional[Tensor], seq_idx: Optional[Tensor], dt_softplus: bool,
               dt_min: float, dt_max: float) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor,
                                                      Tensor, Tensor]:
        grads = bwd(dy, dfinal, x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states, seq_idx,
                    dt_softplus, dt_min, dt_max)
        likes = (x, dt, A, B, C, D, z, dt_bias, initial_states)
        out = []
        for g, like in zip(grads, likes):
            if like is None:
                out.append(x.new_empty(0))
            else:
                out.append(g.to(like.dtype).contiguous() if g is not None else torch.zeros_like(like))
        return tuple(out)

    @bwd_op.register_fake
    def _bwd_fake(dy, dfinal, x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states, seq_idx, dt_softplus,
                  dt_min, dt_max):
        likes = (x, dt, A, B, C, D, z, dt_bias, initial_states)
        return tuple(x.new_empty(0) if t is None else t.new_empty(t.shape) for t in likes)

    def setup_context(ctx, inputs, output):
        (x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states, seq_idx, dt_softplus, dt_min, dt_max) = inputs
        ctx.save_for_backward(x, dt, A, B, C, D, z, dt_bias, initial_states, seq_idx)
        ctx.params = (chunk_size, dt_softplus, dt_min, dt_max)

    def backward(ctx, dy, dfinal):
        x, dt, A, B, C, D, z, dt_bias, initial_states, seq_idx = ctx.saved_tensors
        chunk_size, dt_softplus, dt_min, dt_max = ctx.params
        if dy is None:
            dy = torch.zeros_like(x)
        grads = bwd_op(dy.contiguous(), None if dfinal is None else dfinal.contiguous(), x, dt, A, B, C, chunk_size,
                       D, z, dt_bias, initial_states, seq_idx, dt_softplus, dt_min, dt_max)
        likes = (x, dt, A, B, C, D, z, dt_bias, initial_states)
        dx, ddt, dA, dB, dC, dD, dz, ddt_bias, dinit = (None if like is None else g for g, like in zip(grads, likes))
        return dx, ddt, dA, dB, dC, None, dD, dz, ddt_bias, dinit, None, None, None, None

    fwd_op.register_autograd(backward, setup_context=setup_context)
    return fwd_op, bwd_op


def vjp_backward(fwd: Callable) -> Callable:
    """A backward for a differentiable PyTorch forward: recompute it under torch.func.vjp (which works
    inside a custom op, where plain autograd is switched off) and pull the incoming gradients back."""

    def bwd(dy, dfinal, x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states, seq_idx, dt_softplus,
            dt_min, dt_max):
        names = ("x", "dt", "A", "B", "C", "D", "z", "dt_bias", "initial_states")
        given = dict(zip(names, (x, dt, A, B, C, D, z, dt_bias, initial_states)))
        diff = {k: v for k, v in given.items() if v is not None}

        def f(kw):
            full = {**given, **kw}
            return fwd(full["x"], full["dt"], full["A"], full["B"], full["C"], chunk_size, full["D"], full["z"],
                       full["dt_bias"], full["initial_states"], seq_idx, dt_softplus, dt_min, dt_max)

        (y, final), pullback = torch.func.vjp(f, diff)
        dfin = torch.zeros_like(final) if dfinal is None else dfinal.to(final.dtype)
        (g,) = pullback((dy.to(y.dtype), dfin))
        return tuple(g.get(k) for k in names)

    return bwd
