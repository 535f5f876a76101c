"""Generalised advantage estimation (Schulman et al. 2016): the reverse recurrence over a rollout's T steps.

`gae` runs it as a loop over steps on any device (a few elementwise ops per step). On CUDA the same recurrence
runs as one Triton kernel (`gae_triton`: one program per block of envs walks the steps backwards in registers):
the loop's ~10 launches per step (2000 at T = 200) would otherwise take host time between the rollout and the
PPO update while the GPU idles. Both compute the same fp32 operations in the same order (the kernel may
contract a multiply-add: results agree to rounding, tests/memrl/test_gae.py).
"""
from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # a machine without triton: the loop everywhere
    triton = None


def _check(truncated, final_values) -> None:
    if (truncated is None) != (final_values is None):
        raise ValueError("gae needs truncated and final_values together (or neither), got "
                         f"truncated={'None' if truncated is None else tuple(truncated.shape)}, "
                         f"final_values={'None' if final_values is None else tuple(final_values.shape)}")


def gae(rewards, values, dones, last_value, gamma: float, lam: float, truncated=None, final_values=None):
    """All (N, T) except last_value (N,).

    dones[:, t] = the episode ended with step t (terminated or truncated): nothing flows back across it.
    truncated[:, t] (a subset of dones) = it was cut short (a time limit), so step t bootstraps with
    final_values[:, t], the value of the ended episode's final obs; a terminated step does not bootstrap.
    Returns (advantages, returns). Float32 CUDA inputs take the Triton kernel, everything else the loop.
    """
    _check(truncated, final_values)
    if triton is not None and rewards.is_cuda and rewards.dtype == torch.float32:
        return gae_triton(rewards, values, dones, last_value, gamma, lam, truncated, final_values)
    return gae_loop(rewards, values, dones, last_value, gamma, lam, truncated, final_values)


def gae_loop(rewards, values, dones, last_value, gamma: float, lam: float, truncated=None, final_values=None):
    """The recurrence as a loop over steps (the reference; any device and dtype)."""
    _check(truncated, final_values)
    n, length = rewards.shape
    adv = torch.zeros_like(rewards)
    next_adv = torch.zeros_like(last_value)
    next_value = last_value
    for t in reversed(range(length)):
        live = 1.0 - dones[:, t].float()
        bootstrap = next_value * live
        if truncated is not None:
            bootstrap = bootstrap + final_values[:, t] * truncated[:, t].float()
        delta = rewards[:, t] + gamma * bootstrap - values[:, t]
        next_adv = delta + gamma * lam * live * next_adv
        adv[:, t] = next_adv
        next_value = values[:, t]
    return adv, adv + values


if triton is not None:
    @triton.jit
    def _gae_kernel(r_ptr, v_ptr, d_ptr, tr_ptr, fv_ptr, last_ptr, adv_ptr, ret_ptr, N, T, gamma, gamma_lam,
                    HAS_TRUNC: tl.constexpr, BN: tl.constexpr):
        n = tl.program_id(0) * BN + tl.arange(0, BN)
        m = n < N
        row = n.to(tl.int64) * T  # every (N, T) input is contiguous
        next_adv = tl.zeros((BN,), dtype=tl.float32)
        next_value = tl.load(last_ptr + n, mask=m, other=0.0)
        for k in range(T):
            t = T - 1 - k
            live = 1.0 - tl.load(d_ptr + row + t, mask=m, other=0.0)
            bootstrap = next_value * live
            if HAS_TRUNC:
                bootstrap = bootstrap + tl.load(fv_ptr + row + t, mask=m, other=0.0) * tl.load(tr_ptr + row + t, mask=m,
                                                                                               other=0.0)
            v = tl.load(v_ptr + row + t, mask=m, other=0.0)
            delta = tl.load(r_ptr + row + t, mask=m, other=0.0) + gamma * bootstrap - v
            next_adv = delta + gamma_lam * live * next_adv
            tl.store(adv_ptr + row + t, next_adv, mask=m)
            tl.store(ret_ptr + row + t, next_adv + v, mask=m)
            next_value = v


def gae_triton(rewards, values, dones, last_value, gamma: float, lam: float, truncated=None, final_values=None):
    """The recurrence as one Triton kernel (float32; CUDA tensors, or CPU ones under TRITON_INTERPRET=1)."""
    _check(truncated, final_values)
    if triton is None:
        raise RuntimeError("gae_triton needs triton, which is not installed")
    n, length = rewards.shape
    f32 = dict(dtype=torch.float32)
    r, v = rewards.contiguous(), values.contiguous()
    d = dones.to(**f32).contiguous()  # (N, T) 0/1
    has_trunc = truncated is not None
    tr = truncated.to(**f32).contiguous() if has_trunc else d
    fv = final_values.to(**f32).contiguous() if has_trunc else d
    adv, ret = torch.empty_like(r), torch.empty_like(r)
    if adv.numel():
        bn = 128
        # gamma * lam as the loop computes it (a Python float product, then rounded to fp32 inside the kernel)
        _gae_kernel[(triton.cdiv(n, bn),)](r, v, d, tr, fv, last_value.to(**f32).contiguous(), adv, ret, n, length,
                                           float(gamma), float(gamma * lam), HAS_TRUNC=has_trunc, BN=bn)
    return adv, ret
