"""Mamba2 module: upstream-compatible parameters, forward == token-by-token step (with resets),
forward_with_state, seq_idx isolation, inference cache, variants, gradients, torch.compile.

Runs on whatever backend `auto` picks for CPU tensors (reference), small shapes only.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import pytest
import torch
from hypothesis import given, settings, strategies as st

from mamba_compat import Mamba2
from mamba_compat.modules.conv import causal_conv1d, conv_state_after, segments_from_reset
from mamba_compat.modules.rmsnorm_gated import rmsnorm_gated
from upstream import UpstreamUnavailable, import_upstream

TOL = 1e-5  # DESIGN §2: fp32 forward vs step
D_MODEL = 32
SMALL = dict(d_state=8, headdim=16, chunk_size=8)
VARIANTS = {
    "base": {},
    "ngroups2": dict(ngroups=2),
    "D_has_hdim": dict(D_has_hdim=True),
    "gated_mlp": dict(d_ssm=32),  # d_ssm < d_inner = 64: 32 channels go through the gated MLP
    "no_rmsnorm": dict(rmsnorm=False),
    "norm_before_gate": dict(norm_before_gate=True, ngroups=2),
    "dt_limit": dict(dt_limit=(0.02, 0.3)),
    "conv3_bias": dict(d_conv=3, bias=True, conv_bias=False),
}


def make(seed=0, **kw):
    torch.manual_seed(seed)
    m = Mamba2(D_MODEL, **{**SMALL, **kw})
    with torch.no_grad():  # non-trivial values for parameters that start at constants
        m.D.add_(0.3 * torch.randn_like(m.D))
        if m.rmsnorm:
            m.norm.weight.add_(0.3 * torch.randn_like(m.norm.weight))
    return m


def step_loop(m, u, conv, ssm, reset=None):
    """Oracle: `step` token by token, zeroing both states where reset. Returns (out, conv, ssm)."""
    conv, ssm = conv.clone(), ssm.clone()
    outs = []
    for t in range(u.shape[1]):
        if reset is not None:
            keep = (~reset[:, t]).to(conv.dtype)
            conv.mul_(keep[:, None, None])
            ssm.mul_(keep[:, None, None, None].to(ssm.dtype))
        outs.append(m.step(u[:, t:t + 1], conv, ssm)[0])
    return torch.cat(outs, dim=1), conv, ssm


def rand_states(m, b, seed=1):
    g = torch.Generator().manual_seed(seed)
    conv = torch.randn(b, m.conv_dim, m.d_conv, generator=g)
    ssm = torch.randn(b, m.nheads, m.headdim, m.d_state, generator=g)
    return conv, ssm


def maxdiff(a, b):
    return (a.float() - b.float()).abs().max().item()


# ------------------------------------------------------------------------------------------------------------
# parameters and state_dict


def expected_shapes(d_model, d_state=128, d_conv=4, expand=2, headdim=64, d_ssm=None, ngroups=1, D_has_hdim=False,
                    rmsnorm=True, bias=False, conv_bias=True, **_):
    """The state_dict table from upstream's formulas (mamba_ssm 2.3.2 modules/mamba2.py), in upstream's order."""
    d_inner = expand * d_model
    d_ssm = d_inner if d_ssm is None else d_ssm
    nheads = d_ssm // headdim
    conv_dim = d_ssm + 2 * ngroups * d_state
    d_in_proj = 2 * d_inner + 2 * ngroups * d_state + nheads
    table = {"dt_bias": (nheads,), "A_log": (nheads,), "D": (d_ssm if D_has_hdim else nheads,),
             "in_proj.weight": (d_in_proj, d_model)}
    if bias:
        table["in_proj.bias"] = (d_in_proj,)
    table["conv1d.weight"] = (conv_dim, 1, d_conv)
    if conv_bias:
        table["conv1d.bias"] = (conv_dim,)
    if rmsnorm:
        table["norm.weight"] = (d_ssm,)
    table["out_proj.weight"] = (d_model, d_inner)
    if bias:
        table["out_proj.bias"] = (d_model,)
    return table


CONFIGS = [
    dict(d_model=256),  # all defaults: d_state 128, headdim 64
    dict(d_model=64, d_state=16, headdim=16, ngroups=4, bias=True),
    dict(d_model=64, d_state=16, headdim=32, d_ssm=64, D_has_hdim=True, conv_bias=False),
    dict(d_model=48, d_state=8, d_conv=2, expand=3, headdim=24, rmsnorm=False),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: "-".join(f"{k}{v}" for k, v in c.items()))
def test_state_dict_matches_upstream_table(cfg):
    m = Mamba2(**cfg)
    got = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    assert got == expected_shapes(**cfg)
    assert list(got) == list(expected_shapes(**cfg))
    sd = {k: torch.randn(s) for k, s in expected_shapes(**cfg).items()}
    m.load_state_dict(sd, strict=True)


def test_init_values_like_upstream():
    m = Mamba2(64, d_state=16, headdim=16, dt_min=0.01, dt_max=0.05, A_init_range=(2, 4), conv_init=0.1)
    dt = torch.nn.functional.softplus(m.dt_bias)
    assert dt.min() >= 0.01 - 1e-6 and dt.max() <= 0.05 + 1e-6
    A = torch.exp(m.A_log)
    assert A.min() >= 2 and A.max() <= 4
    assert torch.equal(m.D, torch.ones(8)) and torch.equal(m.norm.weight, torch.ones(128))
    assert m.conv1d.weight.abs().max() <= 0.1
    assert m.dt_bias._no_weight_decay and m.A_log._no_weight_decay and m.D._no_weight_decay
    m16 = Mamba2(64, d_state=16, headdim=16, dtype=torch.bfloat16)
    assert m16.in_proj.weight.dtype == torch.bfloat16 and m16.A_log.dtype == torch.bfloat16
    assert m16.D.dtype == torch.float32  # upstream creates D without the dtype


@pytest.fixture
def upstream_mamba2():
    """mamba_ssm's own Mamba2 class (construct only; its kernels need CUDA), from its public source that
    tests/upstream.py fetches with pip into a cache folder. A failed fetch fails the test, loudly: only
    MAMBA_COMPAT_OFFLINE=1 (a machine without the package registry) turns it into a skip."""
    try:
        return import_upstream("modules.mamba2").Mamba2
    except UpstreamUnavailable as err:
        if os.environ.get("MAMBA_COMPAT_OFFLINE") == "1":
            pytest.skip(f"MAMBA_COMPAT_OFFLINE=1 and upstream mamba_ssm not cached: {err}")
        pytest.fail(f"could not fetch upstream mamba_ssm for the parity tests (set MAMBA_COMPAT_OFFLINE=1 to skip "
                    f"them on a machine without the package registry): {err}")


@pytest.mark.parametrize("cfg", CONFIGS[1:], ids=["groups-bias", "dssm-hdim", "norms-off"])
def test_upstream_state_dict_loads_strict(upstream_mamba2, cfg):
    up = upstream_mamba2(**cfg)
    ours = Mamba2(**cfg)
    ours.load_state_dict(up.state_dict(), strict=True)
    up.load_state_dict(ours.state_dict(), strict=True)
    assert [(k, v.shape) for k, v in up.state_dict().items()] == [(k, v.shape) for k, v in ours.state_dict().items()]


UPSTREAM_CPU_VARIANTS = {k: VARIANTS[k] for k in ("base", "ngroups2", "D_has_hdim", "gated_mlp", "no_rmsnorm",
                                                   "norm_before_gate", "dt_limit", "conv3_bias")}


@pytest.mark.parametrize("variant", list(UPSTREAM_CPU_VARIANTS))
def test_matches_upstream_module_on_cpu(upstream_mamba2, monkeypatch, variant):
    """mamba_ssm's own Mamba2 code (non-fused path: in_proj split, nn.Conv1d, scan, its pure-PyTorch gated
    RMSNorm `rms_norm_ref`, gated-MLP concat, out_proj) on CPU, with its CUDA/Triton kernels swapped for
    PyTorch: the scan for our float64 `naive` oracle, RMSNorm for upstream's reference. Same weights -> same
    outputs; and upstream's PyTorch decode step (ngroups 1, per-head D) == ours."""
    from mamba_compat.ops.ssd.naive import ssd_naive
    up_globals = upstream_mamba2.forward.__globals__
    ref_norm = up_globals["RMSNormGated"].forward.__globals__["rms_norm_ref"]

    def scan(x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None, dt_softplus=False,
             dt_limit=(0.0, math.inf), return_final_states=False, **_):
        y, final = ssd_naive(x.double(), dt.double(), A.double(), B.double(), C.double(), None,
                             None if D is None else D.double(), None if z is None else z.double(),
                             None if dt_bias is None else dt_bias.double(), None, None, dt_softplus, *dt_limit)
        return (y.to(x.dtype), final.float()) if return_final_states else y.to(x.dtype)

    def norm_forward(self, x, z=None):
        return ref_norm(x, self.weight, self.bias, z=z, eps=self.eps, group_size=self.group_size,
                        norm_before_gate=self.norm_before_gate)

    monkeypatch.setitem(up_globals, "mamba_chunk_scan_combined", scan)
    monkeypatch.setitem(up_globals, "selective_state_update", None)
    monkeypatch.setattr(up_globals["RMSNormGated"], "forward", norm_forward)
    kw = {**SMALL, **UPSTREAM_CPU_VARIANTS[variant]}
    ours = make(layer_idx=0, **kw)
    up = upstream_mamba2(D_MODEL, use_mem_eff_path=False, layer_idx=0, **kw)
    up.load_state_dict(ours.state_dict(), strict=True)
    u = torch.randn(2, 11, D_MODEL)
    with torch.no_grad():
        assert maxdiff(ours(u), up(u)) <= TOL
        if kw.get("ngroups", 1) == 1 and not kw.get("D_has_hdim") and "dt_limit" not in kw:
            conv_o, ssm_o = ours.allocate_inference_cache(2, 4)
            conv_u, ssm_u = up.allocate_inference_cache(2, 4)
            for t in range(4):
                assert maxdiff(ours.step(u[:, t:t + 1], conv_o, ssm_o)[0], up.step(u[:, t:t + 1], conv_u, ssm_u)[0]) <= TOL
            assert maxdiff(conv_o, conv_u) <= TOL and maxdiff(ssm_o, ssm_u) <= TOL


def test_strict_round_trip_same_outputs():
    a, b = make(0), make(5)
    u = torch.randn(2, 7, D_MODEL)
    b.load_state_dict(a.state_dict(), strict=True)
    assert torch.equal(a(u), b(u))


def test_process_group_rejected():
    with pytest.raises(NotImplementedError, match="process_group"):
        Mamba2(32, process_group=object())


@pytest.mark.parametrize("kw, match", [(dict(headdim=24), "headdim"), (dict(ngroups=3), "ngroups"),
                                       (dict(d_ssm=128), "d_ssm"), (dict(A_init_range=(0, 1)), "A_init_range"),
                                       (dict(dt_limit=(0.1, float("nan"))), "dt_limit")])
def test_bad_config(kw, match):
    with pytest.raises(ValueError, match=match):
        Mamba2(32, **{**SMALL, **kw})


def test_bad_inputs():
    m = make()
    u = torch.randn(2, 5, D_MODEL)
    conv, ssm = m.allocate_inference_cache(2, 5)
    with pytest.raises(ValueError, match="d_model"):
        m(torch.randn(2, 5, D_MODEL + 1))
    with pytest.raises(ValueError, match="conv_state"):
        m.forward_with_state(u, conv[:, :-1], ssm)
    with pytest.raises(ValueError, match="ssm_state"):
        m.forward_with_state(u, conv, ssm[:1])
    with pytest.raises(ValueError, match="reset"):
        m.forward_with_state(u, conv, ssm, reset=torch.zeros(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="one token"):
        m.step(u, conv, ssm)
    with pytest.raises(TypeError, match="seq_idx"):
        m(u, seq_idx=torch.zeros(2, 5))


# ------------------------------------------------------------------------------------------------------------
# forward == step


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_forward_equals_step(variant):
    m = make(**VARIANTS[variant])
    b, seqlen = 2, 13  # not a multiple of chunk_size 8
    u = torch.randn(b, seqlen, D_MODEL)
    with torch.no_grad():
        out = m(u)
        conv0, ssm0 = m.allocate_inference_cache(b, seqlen)
        ref, conv_ref, ssm_ref = step_loop(m, u, conv0, ssm0)
        out2, conv, ssm = m.forward_with_state(u)
    assert maxdiff(out, ref) <= TOL
    assert maxdiff(out2, ref) <= TOL
    assert maxdiff(conv, conv_ref) <= TOL and maxdiff(ssm, ssm_ref) <= TOL
    assert ssm.dtype == torch.float32 and conv.shape == conv0.shape and ssm.shape == ssm0.shape


RESETS = {
    "t0": [[0], [0]],
    "t0_and_mid": [[0, 5], [3]],
    "consecutive": [[4, 5, 6], [0, 1]],
    "last": [[10], [9, 10]],
    "every_step": [list(range(11)), []],
}


def reset_mask(b, seqlen, where):
    r = torch.zeros(b, seqlen, dtype=torch.bool)
    for i, ts in enumerate(where):
        r[i, ts] = True
    return r


@pytest.mark.parametrize("pattern", list(RESETS))
@pytest.mark.parametrize("variant", ["base", "ngroups2", "dt_limit", "conv3_bias"])
def test_forward_with_state_resets_equals_step(variant, pattern):
    m = make(**VARIANTS[variant])
    b, seqlen = 2, 11
    u = torch.randn(b, seqlen, D_MODEL)
    conv0, ssm0 = rand_states(m, b)
    reset = reset_mask(b, seqlen, RESETS[pattern])
    with torch.no_grad():
        out, conv, ssm = m.forward_with_state(u, conv0, ssm0, reset)
        ref, conv_ref, ssm_ref = step_loop(m, u, conv0, ssm0, reset)
    assert maxdiff(out, ref) <= TOL
    assert maxdiff(conv, conv_ref) <= TOL
    assert maxdiff(ssm, ssm_ref) <= TOL


_PROP_MODEL = {}


@settings(max_examples=12, deadline=None)
@given(seqlen=st.integers(1, 19), chunk=st.sampled_from([4, 8, 32]), d_conv=st.sampled_from([2, 4]),
       seed=st.integers(0, 2**16), p_reset=st.sampled_from([0.0, 0.15, 0.5]), split=st.integers(0, 19))
def test_property_chunks_resets_split_equal_step(seqlen, chunk, d_conv, seed, p_reset, split):
    """Any length, chunk size, conv width and reset pattern, in one call or two: == step token by token."""
    key = (chunk, d_conv)
    if key not in _PROP_MODEL:
        _PROP_MODEL[key] = make(ngroups=2, chunk_size=chunk, d_conv=d_conv)
    m = _PROP_MODEL[key]
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(2, seqlen, D_MODEL, generator=g)
    reset = torch.rand(2, seqlen, generator=g) < p_reset
    conv0, ssm0 = rand_states(m, 2, seed=seed)
    split = min(split, seqlen)
    with torch.no_grad():
        ref, conv_ref, ssm_ref = step_loop(m, u, conv0, ssm0, reset)
        if 0 < split < seqlen:
            o1, c1, s1 = m.forward_with_state(u[:, :split], conv0, ssm0, reset[:, :split])
            o2, conv, ssm = m.forward_with_state(u[:, split:], c1, s1, reset[:, split:])
            out = torch.cat([o1, o2], 1)
        else:
            out, conv, ssm = m.forward_with_state(u, conv0, ssm0, reset)
    assert maxdiff(out, ref) <= TOL and maxdiff(conv, conv_ref) <= TOL and maxdiff(ssm, ssm_ref) <= TOL


def test_forward_with_state_short_sequence_keeps_window():
    """L < d_conv: the returned window still holds inputs from the given conv_state."""
    m = make()
    conv0, ssm0 = rand_states(m, 2)
    u = torch.randn(2, 2, D_MODEL)
    with torch.no_grad():
        out, conv, ssm = m.forward_with_state(u, conv0, ssm0)
        ref, conv_ref, ssm_ref = step_loop(m, u, conv0, ssm0)
    assert maxdiff(out, ref) <= TOL and maxdiff(conv, conv_ref) <= TOL and maxdiff(ssm, ssm_ref) <= TOL
    assert torch.equal(conv[:, :, :2], conv0[:, :, 2:])


@pytest.mark.parametrize("split", [1, 4, 9])
def test_forward_with_state_split_equals_one_call(split):
    m = make(ngroups=2)
    b, seqlen = 2, 12
    u = torch.randn(b, seqlen, D_MODEL)
    conv0, ssm0 = rand_states(m, b)
    reset = reset_mask(b, seqlen, [[0, split], [split + 1, 7]])
    with torch.no_grad():
        out, conv, ssm = m.forward_with_state(u, conv0, ssm0, reset)
        o1, c1, s1 = m.forward_with_state(u[:, :split], conv0, ssm0, reset[:, :split])
        o2, c2, s2 = m.forward_with_state(u[:, split:], c1, s1, reset[:, split:])
    assert maxdiff(out, torch.cat([o1, o2], 1)) <= TOL
    assert maxdiff(conv, c2) <= TOL and maxdiff(ssm, s2) <= TOL


def test_single_token_paths_agree():
    """L == 1: without autograd forward_with_state decodes with `step` on copies; with autograd it scans.
    Both must give the same results, and the given states must not be modified."""
    m = make(ngroups=2)
    u = torch.randn(3, 1, D_MODEL)
    conv0, ssm0 = rand_states(m, 3)
    reset = torch.tensor([[True], [False], [True]])
    c_keep, s_keep = conv0.clone(), ssm0.clone()
    with torch.no_grad():
        fast = m.forward_with_state(u, conv0, ssm0, reset)
    slow = m.forward_with_state(u, conv0, ssm0, reset)  # parameters require grad: the scan path
    assert slow[0].requires_grad and not fast[0].requires_grad
    for a, b in zip(fast, slow):
        assert maxdiff(a, b) <= TOL
    assert torch.equal(conv0, c_keep) and torch.equal(ssm0, s_keep)


def test_returned_states_are_fresh_and_editable():
    """An RL loop zeroes the returned states in place at episode ends; that must not break backward."""
    m = make()
    u = torch.randn(2, 6, D_MODEL)
    out, conv, ssm = m.forward_with_state(u)
    conv.mul_(0.0)
    ssm.mul_(0.0)
    out.sum().backward()
    assert m.in_proj.weight.grad is not None


def test_reset_at_t0_ignores_given_states():
    m = make()
    u = torch.randn(2, 6, D_MODEL)
    conv0, ssm0 = rand_states(m, 2)
    reset = reset_mask(2, 6, [[0], [0]])
    with torch.no_grad():
        a = m.forward_with_state(u, 100 * conv0, 100 * ssm0, reset)
        b = m.forward_with_state(u)
    for x, y in zip(a, b):
        assert maxdiff(x, y) <= TOL


# ------------------------------------------------------------------------------------------------------------
# conv window and seq_idx isolation


def test_conv_window_cleared_by_reset():
    """Inputs before a reset (in the window or the sequence) cannot reach outputs at or after it."""
    torch.manual_seed(0)
    b, seqlen, c, w = 2, 9, 5, 4
    x, weight, bias = torch.randn(b, seqlen, c), torch.randn(c, w), torch.randn(c)
    window = torch.randn(b, c, w)
    reset = reset_mask(b, seqlen, [[3], [0, 6]])
    seg = segments_from_reset(reset)
    y = causal_conv1d(x, weight, bias, window, seg)
    x2 = x.clone()
    x2[0, :3] += 1000.0  # before batch 0's reset at 3
    x2[1, :6] += 1000.0  # before batch 1's reset at 6
    y2 = causal_conv1d(x2, weight, bias, 1000 * window, seg)
    assert torch.equal(y[0, 3:], y2[0, 3:]) and torch.equal(y[1, 6:], y2[1, 6:])
    assert (y[0, :3] - y2[0, :3]).abs().min() > 1  # before the reset the window matters
    # explicit formula at one position right after a reset: only the current input contributes
    assert torch.allclose(y[0, 3], bias + weight[:, -1] * x[0, 3])
    # the window carried out is zero before the last reset
    state = conv_state_after(x, window, w, seg)  # (B, C, W)
    assert torch.equal(state[1, :, :1], torch.zeros(c, 1)) and torch.equal(state[1, :, 1:], x[1, 6:].T)
    # without segments: plain causal conv with the window as left padding
    ref = torch.nn.functional.conv1d(torch.cat([window[:, :, 1:], x.transpose(1, 2)], -1), weight[:, None], bias,
                                     groups=c).transpose(1, 2)
    assert torch.allclose(causal_conv1d(x, weight, bias, window), ref, atol=1e-6)


def test_seq_idx_equals_separate_sequences():
    m = make(ngroups=2)
    lens = [5, 1, 9, 3]
    u = torch.randn(1, sum(lens), D_MODEL)
    seq_idx = torch.cat([torch.full((n,), 7 * i) for i, n in enumerate(lens)]).unsqueeze(0)  # values arbitrary
    with torch.no_grad():
        packed = m(u, seq_idx=seq_idx)
        parts = torch.split(u, lens, dim=1)
        separate = torch.cat([m(p) for p in parts], dim=1)
        cu = torch.tensor([0] + lens).cumsum(0)
        varlen = m(u, cu_seqlens=cu)
        # per-batch boundaries differ: batch 1 holds the same tokens unsplit
        both = m(torch.cat([u, u]), seq_idx=torch.cat([seq_idx, torch.zeros_like(seq_idx)]))
    assert maxdiff(packed, separate) <= TOL
    assert maxdiff(varlen, separate) <= TOL
    assert maxdiff(both[0], packed[0]) <= TOL and maxdiff(both[1], m(u)[0].detach()) <= TOL
    # isolation: changing the first sequence changes nothing after it (conv and state)
    u2 = u.clone()
    u2[:, :lens[0]] += 10.0
    with torch.no_grad():
        packed2 = m(u2, seq_idx=seq_idx)
    assert maxdiff(packed2[:, lens[0]:], packed[:, lens[0]:]) <= TOL


@dataclass
class InferenceParams:
    max_seqlen: int
    max_batch_size: int
    seqlen_offset: int = 0
    key_value_memory_dict: dict = field(default_factory=dict)


@pytest.mark.parametrize("variant", ["base", "gated_mlp", "dt_limit"])
def test_inference_params_prefill_decode_equals_forward(variant):
    m = make(layer_idx=3, **VARIANTS[variant])
    b, prompt, total = 2, 6, 10
    u = torch.randn(b, total, D_MODEL)
    params = InferenceParams(total, b)
    with torch.no_grad():
        full = m(u)
        outs = [m(u[:, :prompt], inference_params=params)]
        params.seqlen_offset = prompt
        for t in range(prompt, total - 2):
            outs.append(m(u[:, t:t + 1], inference_params=params))
            params.seqlen_offset += 1
        outs.append(m(u[:, total - 2:], inference_params=params))  # two tokens at once from the cache
    assert maxdiff(torch.cat(outs, 1), full) <= TOL
    conv, ssm = params.key_value_memory_dict[3]
    with torch.no_grad():
        _, conv_ref, ssm_ref = m.forward_with_state(u)
    assert maxdiff(conv, conv_ref) <= TOL and maxdiff(ssm, ssm_ref) <= TOL


def test_flat_input_with_seqlen():
    m = make()
    u = torch.randn(3, 5, D_MODEL)
    with torch.no_grad():
        assert torch.equal(m(u.reshape(15, D_MODEL), seqlen=5), m(u).reshape(15, D_MODEL))


# ------------------------------------------------------------------------------------------------------------
# pieces, dtypes, gradients, compile


@pytest.mark.parametrize("norm_before_gate", [False, True])
def test_rmsnorm_gated_grouped(norm_before_gate):
    torch.manual_seed(0)
    x, z, w = torch.randn(3, 12), torch.randn(3, 12), torch.randn(12)
    out = rmsnorm_gated(x, w, z, eps=1e-5, group_size=4, norm_before_gate=norm_before_gate)
    silu = z * torch.sigmoid(z)
    ref = torch.empty_like(x)
    for g in range(3):
        sl = slice(4 * g, 4 * g + 4)
        v = x[:, sl] if norm_before_gate else x[:, sl] * silu[:, sl]
        n = v / torch.sqrt(v.pow(2).mean(-1, keepdim=True) + 1e-5) * w[sl]
        ref[:, sl] = n * silu[:, sl] if norm_before_gate else n
    assert torch.allclose(out, ref, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_params(dtype):
    m32 = make(ngroups=2)
    m = make(ngroups=2).to(dtype)
    u = torch.randn(2, 9, D_MODEL)
    conv0, ssm0 = rand_states(m32, 2)
    reset = reset_mask(2, 9, [[4], []])
    with torch.no_grad():
        ref = m32.forward_with_state(u, conv0, ssm0, reset)
        out, conv, ssm = m.forward_with_state(u.to(dtype), conv0.to(dtype), ssm0, reset)
        step_out, _, step_ssm = step_loop(m, u.to(dtype), conv0.to(dtype), ssm0, reset)
    assert out.dtype == dtype and conv.dtype == dtype and ssm.dtype == torch.float32
    conv_c, ssm_c = m.allocate_inference_cache(2, 9)
    assert conv_c.dtype == dtype and ssm_c.dtype == torch.float32
    scale = ref[0].abs().max().item()
    assert maxdiff(out, ref[0]) <= 0.05 * scale
    assert maxdiff(ssm, ref[2]) <= 0.05 * ref[2].abs().max().item()
    assert maxdiff(step_out, out) <= 0.05 * scale
    assert torch.isfinite(m(u.to(dtype))).all()


def test_gradients_reach_every_parameter_and_states():
    m = make(ngroups=2, d_ssm=32, bias=True)
    b, seqlen = 2, 10
    u = torch.randn(b, seqlen, D_MODEL, requires_grad=True)
    conv0, ssm0 = rand_states(m, b)
    conv0.requires_grad_(True)
    ssm0.requires_grad_(True)
    reset = reset_mask(b, seqlen, [[], [5]])
    out, conv, ssm = m.forward_with_state(u, conv0, ssm0, reset)
    (out.square().sum() + conv.sum() + ssm.square().sum()).backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    for t in (u, conv0, ssm0):
        assert t.grad is not None and torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0
    # only the last d_conv-1 columns of the window can influence anything
    assert torch.equal(conv0.grad[:, :, 0], torch.zeros_like(conv0.grad[:, :, 0]))


def test_state_gradients_gradcheck_float64():
    torch.manual_seed(0)
    m = Mamba2(8, d_state=4, headdim=8, chunk_size=4, dtype=torch.float64)
    with torch.no_grad():
        m.D.data = m.D.data.double()
    u = torch.randn(1, 6, 8, dtype=torch.float64)
    conv0 = torch.randn(1, m.conv_dim, m.d_conv, dtype=torch.float64, requires_grad=True)
    ssm0 = torch.randn(1, m.nheads, m.headdim, m.d_state, dtype=torch.float64, requires_grad=True)
    reset = reset_mask(1, 6, [[3]])

    def f(c, s):  # outputs and both final states, no reset
        return m.forward_with_state(u, c, s)

    assert torch.autograd.gradcheck(f, (conv0, ssm0), atol=1e-6, rtol=1e-4, fast_mode=True)
    g = lambda c, s: m.forward_with_state(u, c, s, reset)[0]  # noqa: E731 - the states only feed t < 3
    assert torch.autograd.gradcheck(g, (conv0, ssm0), atol=1e-6, rtol=1e-4, fast_mode=True)


def test_split_gradients_equal_one_call():
    """Gradients through carried states: two calls chained == one call."""
    m = make()
    u = torch.randn(2, 10, D_MODEL)
    conv0, ssm0 = rand_states(m, 2)
    reset = reset_mask(2, 10, [[6], []])
    grads = []
    for split in (None, 4):
        m.zero_grad()
        if split is None:
            out = m.forward_with_state(u, conv0, ssm0, reset)[0]
        else:
            o1, c1, s1 = m.forward_with_state(u[:, :split], conv0, ssm0, reset[:, :split])
            out = torch.cat([o1, m.forward_with_state(u[:, split:], c1, s1, reset[:, split:])[0]], 1)
        out.square().sum().backward()
        grads.append({n: p.grad.clone() for n, p in m.named_parameters()})
    for n in grads[0]:
        assert torch.allclose(grads[0][n], grads[1][n], rtol=1e-4, atol=1e-5), n


def test_torch_compile_forward_fullgraph():
    m = make()
    u = torch.randn(2, 7, D_MODEL, requires_grad=True)
    ref = m(u)
    out = torch.compile(m, fullgraph=True)(u)
    assert maxdiff(out, ref) <= TOL
    (g_ref,) = torch.autograd.grad(ref.square().sum(), u)
    (g,) = torch.autograd.grad(out.square().sum(), u)
    assert torch.allclose(g, g_ref, rtol=1e-4, atol=1e-5)


def test_torch_compile_step_fullgraph():
    """Mamba2.step traces without graph breaks (the decode op is a registered torch.library op that mutates the
    state) and the compiled step updates the caches in place exactly as the eager one."""
    m = make()
    conv_e, ssm_e = m.allocate_inference_cache(2, 4)
    conv_c, ssm_c = m.allocate_inference_cache(2, 4)
    step = torch.compile(m.step, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        for t in range(3):
            tok = torch.randn(2, 1, D_MODEL)
            out_e = m.step(tok, conv_e, ssm_e)[0]
            out_c = step(tok, conv_c, ssm_c)[0]
            assert maxdiff(out_c, out_e) <= TOL
    assert maxdiff(conv_c, conv_e) <= TOL and maxdiff(ssm_c, ssm_e) <= TOL
    assert ssm_c.abs().sum() > 0


def test_decode_op_opcheck():
    """torch.library.opcheck of the registered decode op (schema, fake kernel, in-place mutation declared)."""
    from mamba_compat.ops.state_update import state_update_op
    b, h, p, n = 2, 2, 4, 8
    args = (torch.randn(b, h, p, n), torch.randn(b, h, p), torch.rand(b, h, p), -torch.rand(h, p, n),
            torch.randn(b, 1, n), torch.randn(b, 1, n), torch.randn(h, p), torch.randn(b, h, p), None, True, None)
    torch.library.opcheck(state_update_op("reference"), args)
