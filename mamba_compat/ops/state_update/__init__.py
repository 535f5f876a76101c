"""One-token decode step of the selective scan (`selective_state_update`), updating `state` in place.

Backends, one file each: naive.py (float64 loop, the oracle), reference.py (PyTorch, any device), triton.py (CUDA),
metal.py (MPS). Each exposes `state_update(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus,
state_batch_indices) -> out` on the normalized 4-D layout below and writes `state` in place.
"""
from __future__ import annotations

import importlib
from typing import Optional

import torch
from torch import Tensor

from ... import backends
from ..checks import (require_rank, require_same_device, require_shape, require_tensor, check_groups)

__all__ = ["selective_state_update", "state_update_impl", "state_update_op"]

_IMPLS = {}


def state_update_impl(name: str):
    """The `state_update` function of backend `name` (imported on first use, then cached)."""
    if name not in _IMPLS:
        _IMPLS[name] = importlib.import_module(f"{__name__}.{name}").state_update
    return _IMPLS[name]


def _register_op(name: str):
    """Backend `name`'s decode step as the torch.library op `mamba_compat::state_update_<name>` (mutates `state`;
    fake kernel: an output like x). The body looks the implementation up when it runs, so registering every
    backend here imports none of them (triton, metal) and no registration ever happens inside a trace."""

    @torch.library.custom_op(f"mamba_compat::state_update_{name}", mutates_args=("state",))
    def op(state: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor],
           z: Optional[Tensor], dt_bias: Optional[Tensor], dt_softplus: bool,
           state_batch_indices: Optional[Tensor]) -> Tensor:
        return state_update_impl(name)(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, state_batch_indices)

    @op.register_fake
    def _fake(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, state_batch_indices):
        return torch.empty_like(x, memory_format=torch.contiguous_format)

    return op


_OPS = {name: _register_op(name) for name in backends.BACKENDS if name != "auto"}


def state_update_op(name: str):
    """The registered op of backend `name`: torch.compile(fullgraph=True) traces `Mamba2.step` through it. Eager
    calls go to the implementation directly, since the op's dispatch would add host time to every token."""
    return _OPS[name]


state_update_impl("reference")


def selective_state_update(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False,
                           state_batch_indices=None, backend=None):
    """One decode step; same arguments and result as mamba_ssm's.

    Args:
        state: (batch, dim, dstate) or (batch, nheads, dim, dstate); updated in place. With
            state_batch_indices its first dim may be larger (a cache), rows picked by the indices.
        x: (batch, dim) or (batch, nheads, dim)
        dt: like x (often a broadcast view of a per-head dt)
        A: (dim, dstate) or (nheads, dim, dstate) (often a broadcast view of a per-head A)
        B, C: (batch, dstate) or (batch, ngroups, dstate)
        D: (dim,) or (nheads, dim), optional
        z: like x, optional: out *= silu(z)
        dt_bias: (dim,) or (nheads, dim), optional
        dt_softplus: apply softplus to dt + dt_bias
        state_batch_indices: (batch,) int; row of `state` for each batch element; negative = padding
            (the row is skipped and its output is zero)
    Returns:
        out: like x
    Example:
        >>> out = selective_state_update(ssm_state, x, dt, A, B, C, D=D, z=z, dt_bias=dt_bias, dt_softplus=True)
    """
    require_tensor("state", state)
    require_rank("state", state, (3, 4), "(batch, dim, dstate) or (batch, nheads, dim, dstate)")
    has_heads = state.dim() == 4
    st = state if has_heads else state.unsqueeze(1)
    _, h, p, n = st.shape
    require_tensor("x", x)
    require_rank("x", x, (3,) if has_heads else (2,), "(batch, nheads, dim)" if has_heads else "(batch, dim)")
    x4 = x if has_heads else x.unsqueeze(1)
    b = x4.shape[0]
    require_shape("x", x4, (b, h, p), "(batch, nheads, dim) matching state " + str(tuple(state.shape)))
    require_tensor("dt", dt)
    require_shape("dt", dt, tuple(x.shape), "x's shape")
    dt4 = dt if has_heads else dt.unsqueeze(1)
    require_tensor("A", A)
    A3 = A if A.dim() == 3 else (A.unsqueeze(0) if A.dim() == 2 else A)
    require_shape("A", A3, (h, p, n), "(nheads, dim, dstate)" if has_heads else "(dim, dstate)")
    require_tensor("B", B)
    B3 = B if B.dim() == 3 else (B.unsqueeze(1) if B.dim() == 2 else B)
    require_rank("B", B3, (3,), "(batch, ngroups, dstate) or (batch, dstate)")
    if B3.shape[0] != b or B3.shape[2] != n:
        raise ValueError(f"B must have shape (batch, ngroups, dstate) with batch={b}, dstate={n}, got {tuple(B.shape)}")
    check_groups(h, B3.shape[1], f"B {tuple(B.shape)} (state has shape {tuple(state.shape)})")
    require_tensor("C", C)
    C3 = C if C.dim() == 3 else (C.unsqueeze(1) if C.dim() == 2 else C)
    require_shape("C", C3, tuple(B3.shape), "B's shape")
    require_tensor("D", D, optional=True)
    D2 = None if D is None else (D.unsqueeze(0) if (D.dim() == 1 and not has_heads) else D)
    if D2 is not None and D2.dim() == 1 and has_heads:
        D2 = D2[:, None].expand(h, p)  # per-head D broadcast over dim
    if D2 is not None:
        require_shape("D", D2, (h, p), "(nheads, dim)" if has_heads else "(dim,)")
    require_tensor("z", z, optional=True)
    z4 = None if z is None else (z if has_heads else z.unsqueeze(1))
    if z is not None:
        require_shape("z", z, tuple(x.shape), "x's shape")
    require_tensor("dt_bias", dt_bias, optional=True)
    db2 = None if dt_bias is None else (dt_bias.unsqueeze(0) if (dt_bias.dim() == 1 and not has_heads) else dt_bias)
    if db2 is not None and db2.dim() == 1 and has_heads:
        db2 = db2[:, None].expand(h, p)
    if db2 is not None:
        require_shape("dt_bias", db2, (h, p), "(nheads, dim)" if has_heads else "(dim,)")
    if state_batch_indices is not None:
        if not hasattr(state_batch_indices, "dtype") or state_batch_indices.dtype.is_floating_point:
            raise TypeError("state_batch_indices must be an integer tensor of shape (batch,)")
        require_shape("state_batch_indices", state_batch_indices, (b,), "(batch,)")
    elif st.shape[0] != b:
        raise ValueError(f"state has batch {st.shape[0]} but x has batch {b}; pass state_batch_indices to update "
                         "selected rows of a larger cache")
    require_same_device(dict(state=state, x=x, dt=dt, A=A, B=B, C=C, D=D, z=z, dt_bias=dt_bias,
                             state_batch_indices=state_batch_indices))
    name = backends.resolve_for_call(backend, x.device, x.dtype)
    run = state_update_op(name) if torch.compiler.is_compiling() else state_update_impl(name)
    out = run(st, x4, dt4, A3, B3, C3, D2, z4, db2, dt_softplus, state_batch_indices)
    return out if has_heads else out.squeeze(1)
