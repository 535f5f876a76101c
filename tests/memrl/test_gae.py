"""GAE: the Triton kernel (what CUDA runs) against the loop, the loop against a float64 hand loop.

Without a GPU the kernel runs interpreted on CPU tensors (TRITON_INTERPRET=1, tests/conftest.py). Measured
kernel-vs-loop differences: 0 in the interpreter (these shapes, 3 seeds: the same fp32 operations in the same
order); compiled, the kernel may contract a multiply-add into an FMA (a few fp32 ulps per step, carried back
over T steps with factor gamma * lam < 1): the tolerance, 2e-6 of max |adv|, allows that.
"""
from __future__ import annotations

import importlib

import pytest
import torch

from memrl.ppo import gae
from memrl.ppo.gae import gae_loop, gae_triton

DEV = "cuda" if torch.cuda.is_available() else "cpu"
TOL = 2e-6


def rollout(n, t, seed, trunc=True):
    g = torch.Generator().manual_seed(seed)
    rewards = torch.randn(n, t, generator=g)
    values = torch.randn(n, t, generator=g)
    dones = torch.rand(n, t, generator=g) < 0.1
    truncated = dones & (torch.rand(n, t, generator=g) < 0.5) if trunc else None
    final_values = torch.randn(n, t, generator=g) if trunc else None
    last = torch.randn(n, generator=g)
    return rewards, values, dones, last, truncated, final_values


def hand_gae(rewards, values, dones, last, gamma, lam, truncated, final_values):
    """float64, one env and one step at a time."""
    n, t = rewards.shape
    adv = torch.zeros(n, t, dtype=torch.float64)
    for i in range(n):
        a, nv = 0.0, float(last[i])
        for s in reversed(range(t)):
            live = 0.0 if dones[i, s] else 1.0
            boot = nv * live + (float(final_values[i, s]) if truncated is not None and truncated[i, s] else 0.0)
            delta = float(rewards[i, s]) + gamma * boot - float(values[i, s])
            a = delta + gamma * lam * live * a
            adv[i, s] = a
            nv = float(values[i, s])
    return adv, adv + values.double()


def rel(a, b):
    return float((a.double().cpu() - b.double().cpu()).abs().max() / b.double().abs().max())


@pytest.mark.parametrize("trunc", [True, False])
def test_loop_vs_float64_hand_loop(trunc):
    r, v, d, last, tr, fv = rollout(5, 23, seed=1, trunc=trunc)
    adv, ret = gae_loop(r, v, d, last, 0.97, 0.9, tr, fv)
    hadv, hret = hand_gae(r, v, d, last, 0.97, 0.9, tr, fv)
    assert rel(adv, hadv) < 1e-6 and rel(ret, hret) < 1e-6


@pytest.mark.parametrize("n,t", [(1, 1), (3, 17), (130, 40), (257, 5)])  # envs across the 128-env programs
@pytest.mark.parametrize("trunc", [True, False])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_triton_vs_loop(n, t, trunc, seed):
    r, v, d, last, tr, fv = rollout(n, t, seed, trunc)
    adv, ret = gae_loop(r, v, d, last, 0.99, 0.95, tr, fv)
    ins = [x.to(DEV) if x is not None else None for x in (r, v, d, last, tr, fv)]
    kadv, kret = gae_triton(*ins[:4], 0.99, 0.95, *ins[4:])
    assert kadv.shape == (n, t) and kret.dtype == torch.float32
    assert rel(kadv, adv) < TOL and rel(kret, ret) < TOL


def test_triton_strided_inputs_and_float_dones():
    """Rollout records may be views (a slice of a wider buffer); dones may come as floats."""
    r, v, d, last, tr, fv = rollout(6, 30, seed=4)
    wide = torch.randn(6, 50)
    wide[:, 10:40] = r
    adv, _ = gae_loop(r, v, d, last, 0.9, 0.8, tr, fv)
    kadv, _ = gae_triton(wide[:, 10:40].to(DEV), v.to(DEV), d.float().to(DEV), last.to(DEV), 0.9, 0.8,
                         tr.to(DEV), fv.to(DEV))
    assert rel(kadv, adv) < TOL


def test_dispatch_takes_the_kernel_on_cuda_only(monkeypatch):
    mod = importlib.import_module("memrl.ppo.gae")  # (memrl.ppo.gae the attribute is the function)
    calls = []
    monkeypatch.setattr(mod, "gae_triton", lambda *a, **k: calls.append(1) or gae_loop(*a, **k))
    r, v, d, last, tr, fv = rollout(2, 3, seed=0)
    gae(r, v, d, last, 0.9, 0.9, truncated=tr, final_values=fv)
    assert calls == []  # CPU tensors: the loop
    if torch.cuda.is_available():
        gae(*(x.cuda() for x in (r, v, d, last)), 0.9, 0.9, truncated=tr.cuda(), final_values=fv.cuda())
        assert calls == [1]


def test_truncated_without_final_values_refused():
    r, v, d, last, tr, _ = rollout(2, 3, seed=0)
    for fn in (gae, gae_loop, gae_triton):
        with pytest.raises(ValueError, match=r"gae needs truncated and final_values together .* final_values=None"):
            fn(r, v, d, last, 0.9, 0.9, truncated=tr)
