"""Inputs and float64 oracle values for the Metal shim tests (naive.py's sequential loop, autograd for
the gradients; the decode step against state_update/reference.py)."""
from __future__ import annotations

import numpy as np
import torch

from mamba_compat.ops.ssd.naive import ssd_naive

GRAD_NAMES = ("x", "dt", "A", "B", "C", "D", "z", "dt_bias", "initial_states")


def make_inputs(seed, b, L, H, P, G, N, *, D="hp", z=True, dt_bias=True, init=True, seq="resets"):
    """Random SSD inputs as float32 numpy arrays; seq: None, 'resets' (changes incl. back to an old id)."""
    rng = np.random.default_rng(seed)
    r = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    inp = dict(x=r(b, L, H, P), dt=r(b, L, H) * 0.7, A=-np.exp(r(H) * 0.5).astype(np.float32),
               B=r(b, L, G, N), C=r(b, L, G, N))
    inp["D"] = None if D is None else (r(H, P) if D == "hp" else r(H))
    inp["z"] = r(b, L, H, P) if z else None
    inp["dt_bias"] = r(H) * 0.3 if dt_bias else None
    inp["initial_states"] = r(b, H, P, N) if init else None
    seq_idx = None
    if seq == "resets":
        seq_idx = np.zeros((b, L), np.int32)
        seq_idx[0, L // 3:] = 1
        seq_idx[0, (2 * L) // 3:] = 0  # a change back to an earlier id is still a reset
        if b > 1:
            seq_idx[1, max(1, L - 2):] = 7
    inp["seq_idx"] = seq_idx
    return inp


def _t(a, grad=False):
    return None if a is None else torch.tensor(a, dtype=torch.float64, requires_grad=grad)


def naive_fwd(inp, dt_softplus, dt_min=0.0, dt_max=float("inf")):
    t = {k: _t(v) for k, v in inp.items() if k != "seq_idx"}
    seq = None if inp["seq_idx"] is None else torch.tensor(inp["seq_idx"])
    y, fin = ssd_naive(t["x"], t["dt"], t["A"], t["B"], t["C"], None, t["D"], t["z"], t["dt_bias"],
                       t["initial_states"], seq, dt_softplus, dt_min, dt_max)
    return y.numpy(), fin.numpy()


def naive_grads(inp, dy, dfinal, dt_softplus, dt_min=0.0, dt_max=float("inf")):
    t = {k: _t(v, grad=True) for k, v in inp.items() if k != "seq_idx"}
    seq = None if inp["seq_idx"] is None else torch.tensor(inp["seq_idx"])
    y, fin = ssd_naive(t["x"], t["dt"], t["A"], t["B"], t["C"], None, t["D"], t["z"], t["dt_bias"],
                       t["initial_states"], seq, dt_softplus, dt_min, dt_max)
    loss = (y * _t(dy)).sum()
    if dfinal is not None:
        loss = loss + (fin * _t(dfinal)).sum()
    loss.backward()
    return tuple(None if t[k] is None else t[k].grad.numpy() for k in GRAD_NAMES)


def assert_close(name, out, ref, rtol=2e-5):
    """Max abs error relative to the oracle's max magnitude (floor 1), and no NaN (outputs start as NaN)."""
    assert out.shape == ref.shape, f"{name}: shape {out.shape} != {ref.shape}"
    assert np.isfinite(out).all(), f"{name}: non-finite values (an element was not written?)"
    scale = max(1.0, float(np.abs(ref).max()))
    err = float(np.abs(out.astype(np.float64) - ref).max())
    assert err <= rtol * scale, f"{name}: max abs err {err:.3e} > {rtol:.1e} * {scale:.3g}"
