"""mamba_compat.patch_transformers(): transformers' Mamba-2 families on our ops, against HF's own torch path.

Tiny random-weight fp32 models built here (no hub downloads): hidden 64, 2 layers, 4 mamba heads of 32, state
16, 2 groups, chunk 8. Tolerances: 10x the largest error measured on CPU over the six families (logits 9.5e-7,
loss 4.8e-7, gradient 1.6e-6 relative to the tensor's max; packed vs separate: logits 1.2e-6, gradients 8.3e-6).

MAMBA_COMPAT_TEST_DEVICE=cuda runs the same tests on the GPU (our Triton kernels against HF's torch path there),
with TF32 off on both sides so that the fp32 tolerances mean the same.
"""
from __future__ import annotations

import importlib
import os
import subprocess
import sys

import pytest
import torch

import transformers  # in the test extra: pip install -e '.[test]'

import mamba_compat
from mamba_compat.integrations import hf_adapters
from mamba_compat.integrations import transformers as hf_patch

DEVICE = torch.device(os.environ.get("MAMBA_COMPAT_TEST_DEVICE", "cpu"))
if DEVICE.type == "cuda":  # fp32 means fp32: no TF32 in HF's matmuls / convolutions or in our Triton dots
    os.environ["MAMBA_COMPAT_TRITON_FP32"] = "ieee"
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False

LOGIT_TOL, LOSS_TOL, GRAD_RTOL = 1e-5, 5e-6, 2e-5
PACKED_LOGIT_TOL, PACKED_GRAD_RTOL = 1e-5, 8e-5
NAMES = list(hf_patch.FUNCTIONS)


VOCAB = 97
_MAMBA = dict(mamba_n_heads=4, mamba_d_head=32, mamba_n_groups=2, mamba_d_state=16, mamba_d_conv=4, mamba_expand=2,
              mamba_chunk_size=8)
_ATTN = dict(intermediate_size=96, num_attention_heads=4, num_key_value_heads=2, attention_dropout=0.0)

# family -> (config class, causal-LM class, config kwargs)
FAMILY_CONFIGS = {
    "mamba2": ("Mamba2Config", "Mamba2ForCausalLM",
               dict(num_heads=4, head_dim=32, expand=2, state_size=16, n_groups=2, chunk_size=8, conv_kernel=4)),
    "bamba": ("BambaConfig", "BambaForCausalLM", dict(**_MAMBA, **_ATTN, attn_layer_indices=[1])),
    "falcon_h1": ("FalconH1Config", "FalconH1ForCausalLM", dict(**_MAMBA, **_ATTN, mamba_d_ssm=128)),
    "granitemoehybrid": ("GraniteMoeHybridConfig", "GraniteMoeHybridForCausalLM",
                         dict(**_MAMBA, **_ATTN, layer_types=["mamba", "attention"], num_local_experts=4,
                              num_experts_per_tok=2, shared_intermediate_size=96)),
    "nemotron_h": ("NemotronHConfig", "NemotronHForCausalLM",
                   dict(**_ATTN, layers_block_type=["mamba", "attention"], head_dim=16, ssm_state_size=16,
                        mamba_num_heads=4, mamba_head_dim=32, n_groups=2, expand=2, conv_kernel=4, chunk_size=8,
                        hidden_dropout=0.0)),
    "zamba2": ("Zamba2Config", "Zamba2ForCausalLM",
               dict(layers_block_type=["mamba", "hybrid"], mamba_d_state=16, mamba_d_conv=4, mamba_expand=2,
                    mamba_ngroups=2, n_mamba_heads=4, chunk_size=8, intermediate_size=96, num_attention_heads=4,
                    num_key_value_heads=4, attention_dropout=0.0, num_mem_blocks=1, adapter_rank=8)),
}


def has_family(family: str) -> bool:
    """Whether the installed transformers has this family's modeling module."""
    try:
        importlib.import_module(f"transformers.models.{family}.modeling_{family}")
    except ModuleNotFoundError:
        return False
    return True


def tiny_model(family: str, seed: int = 0, **overrides) -> torch.nn.Module:
    """A random-weight fp32 causal LM of `family` (FAMILY_CONFIGS' sizes, then `overrides`)."""
    import transformers

    config_name, model_name, kwargs = FAMILY_CONFIGS[family]
    kwargs = dict(vocab_size=VOCAB, hidden_size=64, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                  tie_word_embeddings=False, **kwargs)
    if family != "nemotron_h":  # NemotronHConfig counts its layers_block_type
        kwargs["num_hidden_layers"] = len(overrides.get("layers_block_type", overrides.get("layer_types", [0, 0])))
    kwargs.update(overrides)
    config = getattr(transformers, config_name)(**kwargs)
    torch.manual_seed(seed)
    return getattr(transformers, model_name)(config).float().to(DEVICE)

FAMILIES = [pytest.param(f, marks=pytest.mark.skipif(not has_family(f), reason=f"transformers has no {f}"))
            for f in FAMILY_CONFIGS]
INSTALLED = [f for f in FAMILY_CONFIGS if has_family(f)]


def _module(family):
    return importlib.import_module(f"transformers.models.{family}.modeling_{family}")


def _attrs():
    return {(f, n): getattr(_module(f), n) for f in INSTALLED for n in NAMES}


@pytest.fixture(autouse=True)
def _unpatched():
    before = _attrs()
    yield
    mamba_compat.unpatch_transformers()
    assert all(getattr(_module(f), n) is fn for (f, n), fn in before.items())


@pytest.fixture
def counts(monkeypatch):
    """Calls of our ops made through the adapters: {op name: count}."""
    seen = {}
    for name in ("causal_conv1d", "causal_conv1d_update", "mamba_chunk_scan_combined", "selective_state_update",
                 "rmsnorm_gated"):
        op = getattr(hf_adapters, name)

        def counted(*args, _op=op, _name=name, **kwargs):
            seen[_name] = seen.get(_name, 0) + 1
            return _op(*args, **kwargs)
        monkeypatch.setattr(hf_adapters, name, counted)
    return seen


def _n_mixers(model, family):
    cls = getattr(_module(family), hf_patch.FAMILIES[family])
    return sum(isinstance(m, cls) for m in model.modules())


def _rel(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def _run(model, ids, mode):
    """logits, loss and every parameter's gradient of one forward+backward in `mode` ('train' / 'eval')."""
    getattr(model, mode)()
    model.zero_grad()
    out = model(ids, labels=ids, use_cache=False)
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.logits.detach(), out.loss.detach(), grads


def test_import_patches_nothing():
    code = ("import sys, mamba_compat; mamba_compat.patch_transformers; "
            "assert 'transformers' not in sys.modules, 'importing mamba_compat imported transformers'")
    subprocess.run([sys.executable, "-c", code], check=True)
    for f in INSTALLED:  # HF's own functions (functools.wraps of its torch code), not our adapters
        for n in NAMES:
            fn = getattr(_module(f), n)
            assert fn.__module__ == _module(f).__name__ and hasattr(fn, "__wrapped__"), (f, n)


def test_patch_then_unpatch_restores_identity():
    before = _attrs()
    patched = mamba_compat.patch_transformers()
    assert patched == {f: NAMES for f in INSTALLED}
    for (f, n), fn in before.items():
        assert getattr(_module(f), n) is hf_patch.FUNCTIONS[n][0] and fn is not hf_patch.FUNCTIONS[n][0]
    assert mamba_compat.patch_transformers(["mamba2"]) == {"mamba2": NAMES}  # again: originals are kept
    restored = mamba_compat.unpatch_transformers()
    assert {f: sorted(ns) for f, ns in restored.items()} == {f: sorted(NAMES) for f in INSTALLED}
    assert all(getattr(_module(f), n) is fn for (f, n), fn in before.items())
    assert mamba_compat.unpatch_transformers() == {}


def test_patch_one_family_only():
    before = _attrs()
    assert mamba_compat.patch_transformers("bamba") == {"bamba": NAMES}
    for (f, n), fn in before.items():
        assert (getattr(_module(f), n) is fn) == (f != "bamba")


def test_refuses_unknown_version(monkeypatch):
    before = _attrs()
    # sys.modules' entry at call time: transformers' lazy module may have been swapped since the import above
    monkeypatch.setattr(importlib.import_module("transformers"), "__version__", "5.31.0")
    with pytest.raises(hf_patch.UnsupportedTransformers, match=r"5\.24\.x.*installed transformers is 5\.31\.0"):
        mamba_compat.patch_transformers()
    assert _attrs() == before


def test_refuses_changed_function_signature(monkeypatch):
    before = _attrs()

    def mamba2_chunk_scan(hidden_states, dt, A, B, C, chunk_size, D=None, z_gate=None, **kwargs):
        return None
    monkeypatch.setattr(_module("zamba2"), "mamba2_chunk_scan", mamba2_chunk_scan)
    with pytest.raises(hf_patch.UnsupportedTransformers, match=r"modeling_zamba2\.mamba2_chunk_scan takes .*z_gate"):
        mamba_compat.patch_transformers()
    assert all(getattr(_module(f), n) is fn for (f, n), fn in before.items() if (f, n) != ("zamba2", NAMES[4]))


def test_refuses_unknown_call_in_mixer(monkeypatch):
    def forward(self, hidden_states, cache=None, attention_mask=None, **kwargs):
        mamba2_chunk_scan(hidden_states, 1, 2, 3, 4, 5, new_flag=True)  # noqa: F821
        causal_conv1d_fn(hidden_states, 1)  # noqa: F821
        causal_conv1d_update(hidden_states, 1, 2)  # noqa: F821
        mamba2_split_conv1d_scan_combined(hidden_states, 1, 2, 3, 4, 5, 6)  # noqa: F821
        mamba2_selective_state_update(hidden_states, 1, 2, 3, 4, 5)  # noqa: F821
    monkeypatch.setattr(_module("mamba2").Mamba2Mixer, "forward", forward)
    with pytest.raises(hf_patch.UnsupportedTransformers, match=r"calls mamba2_chunk_scan .*'new_flag'"):
        mamba_compat.patch_transformers(["mamba2"])


def test_unknown_family_name():
    with pytest.raises(ValueError, match=r"models must name families .*\['mamba3'\]"):
        mamba_compat.patch_transformers(["mamba2", "mamba3"])


@pytest.mark.parametrize("family", FAMILIES)
def test_logits_loss_grads_and_generate_match_hf(family, counts):
    model = tiny_model(family)
    n = _n_mixers(model, family)
    torch.manual_seed(1)
    ids = torch.randint(3, VOCAB, (2, 21)).to(DEVICE)  # 3 chunks of 8, the last partial
    prompt = ids[:1, :9]
    ref = {mode: _run(model, ids, mode) for mode in ("train", "eval")}
    with torch.no_grad():
        ref_tokens = model.generate(prompt, max_new_tokens=5, min_new_tokens=5, do_sample=False)
    assert counts == {}  # the reference really is HF's torch path

    mamba_compat.patch_transformers([family])
    for mode, expected in (("train", {"causal_conv1d": n, "mamba_chunk_scan_combined": n, "rmsnorm_gated": n}),
                           ("eval", {"causal_conv1d": n, "mamba_chunk_scan_combined": n})):
        if family == "falcon_h1" and mode == "train":  # mamba_rms_norm=False: the gate is the scan's z
            expected.pop("rmsnorm_gated")
        counts.clear()
        logits, loss, grads = _run(model, ids, mode)
        assert counts == expected, mode
        r_logits, r_loss, r_grads = ref[mode]
        torch.testing.assert_close(logits, r_logits, atol=LOGIT_TOL, rtol=0)
        assert abs(loss.item() - r_loss.item()) < LOSS_TOL
        assert grads.keys() == r_grads.keys()
        for name, g in grads.items():
            assert _rel(g, r_grads[name]) < GRAD_RTOL, (mode, name)
    counts.clear()
    with torch.no_grad():
        tokens = model.generate(prompt, max_new_tokens=5, min_new_tokens=5, do_sample=False)
    assert tokens.tolist() == ref_tokens.tolist()
    # prefill: conv + scan per mixer; then 4 decode steps of one token each
    assert counts == {"causal_conv1d": n, "mamba_chunk_scan_combined": n, "causal_conv1d_update": 4 * n,
                      "selective_state_update": 4 * n}


def test_falcon_h1_with_mamba_rms_norm_matches_hf(counts):
    if not has_family("falcon_h1"):
        pytest.skip("transformers has no falcon_h1")
    model = tiny_model("falcon_h1", mamba_rms_norm=True, mamba_norm_before_gate=False)
    ids = torch.randint(3, VOCAB, (2, 19), generator=torch.Generator().manual_seed(2)).to(DEVICE)
    r_logits, r_loss, r_grads = _run(model, ids, "train")
    mamba_compat.patch_transformers(["falcon_h1"])
    logits, loss, grads = _run(model, ids, "train")
    assert counts["rmsnorm_gated"] == 2
    torch.testing.assert_close(logits, r_logits, atol=LOGIT_TOL, rtol=0)
    assert max(_rel(g, r_grads[k]) for k, g in grads.items()) < GRAD_RTOL


def _packed(lens, seed=3):
    g = torch.Generator().manual_seed(seed)
    seqs = [torch.randint(3, VOCAB, (1, n), generator=g).to(DEVICE) for n in lens]
    seq_idx = torch.cat([torch.full((1, n), i, dtype=torch.int32) for i, n in enumerate(lens)], 1)  # (1, total)
    position_ids = torch.cat([torch.arange(n)[None] for n in lens], 1)  # (1, total)
    seq_idx, position_ids = seq_idx.to(DEVICE), position_ids.to(DEVICE)
    return seqs, torch.cat(seqs, 1), seq_idx, position_ids


def _lm_logits(model, family, ids, **kwargs):
    if family == "mamba2":  # Mamba2ForCausalLM.forward does not pass **kwargs (seq_idx) on to its backbone
        return model.lm_head(model.backbone(ids, use_cache=False, **kwargs).last_hidden_state)
    return model(ids, use_cache=False, **kwargs).logits


@pytest.mark.parametrize("family", FAMILIES)
def test_packed_training_step_equals_separate_sequences(family):
    # granitemoehybrid's attention mask ignores position_ids (no packing without flash-attention): mamba layers only
    over = dict(layer_types=["mamba", "mamba"]) if family == "granitemoehybrid" else {}
    model = tiny_model(family, **over).train()
    seqs, ids, seq_idx, position_ids = _packed([7, 13, 5])
    with pytest.raises(ValueError, match="packed sequences"):  # HF's torch path refuses them
        _lm_logits(model, family, ids, seq_idx=seq_idx, position_ids=position_ids)
    mamba_compat.patch_transformers([family])
    results = []
    for packed in (True, False):
        model.zero_grad()
        if packed:
            logits = _lm_logits(model, family, ids, seq_idx=seq_idx, position_ids=position_ids)
        else:
            logits = torch.cat([_lm_logits(model, family, s) for s in seqs], 1)
        targets = torch.cat([torch.cat([s[:, 1:], torch.full((1, 1), -100, device=DEVICE)], 1) for s in seqs], 1)  # no cross-seq
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)
        loss.backward()
        results.append((logits.detach(), loss.detach(),
                        {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (lp, sp), (gp, gs) = zip(*[(r[0], r[1]) for r in results]), (results[0][2], results[1][2])
    torch.testing.assert_close(lp[0], lp[1], atol=PACKED_LOGIT_TOL, rtol=0)
    assert abs(sp[0].item() - sp[1].item()) < LOSS_TOL
    assert gp.keys() == gs.keys() and len(gs) > 0
    for name in gs:
        assert _rel(gp[name], gs[name]) < PACKED_GRAD_RTOL, name


def test_packed_without_boundaries_differs():
    # the packed test can fail: without seq_idx the sequences mix and the logits move far past the tolerance
    model = tiny_model("mamba2").train()
    mamba_compat.patch_transformers(["mamba2"])
    seqs, ids, seq_idx, _ = _packed([7, 13, 5])
    mixed = _lm_logits(model, "mamba2", ids)
    apart = torch.cat([_lm_logits(model, "mamba2", s) for s in seqs], 1)
    assert (mixed - apart).abs().max() > 100 * PACKED_LOGIT_TOL


def test_cu_seqlens_equals_seq_idx():
    g = torch.Generator().manual_seed(4)
    b, L, h, p, n = 1, 20, 4, 8, 16
    x, z = torch.randn(b, L, h, p, generator=g), torch.randn(b, L, h, p, generator=g)
    dt, A = torch.randn(b, L, h, generator=g), -torch.rand(h, generator=g) - 0.5
    B, C = torch.randn(b, L, 2, n, generator=g), torch.randn(b, L, 2, n, generator=g)
    cu = torch.tensor([0, 6, 15, 20], dtype=torch.int32)
    seq_idx = torch.repeat_interleave(torch.arange(3, dtype=torch.int32), torch.tensor([6, 9, 5]))[None]  # (1, L)
    y1, s1 = hf_adapters.chunk_scan(x, dt, A, B, C, 8, z=z, dt_softplus=True, seq_idx=seq_idx,
                                    return_final_states=True)
    y2, s2 = hf_adapters.chunk_scan(x, dt, A, B, C, 8, z=z, dt_softplus=True, cu_seqlens=cu,
                                    return_final_states=True)
    assert torch.equal(y1, y2) and torch.equal(s1, s2)
    y0 = hf_adapters.chunk_scan(x, dt, A, B, C, 8, z=z, dt_softplus=True)
    assert (y0 - y1)[:, 6:].abs().max() > 1e-2 and torch.equal(y0[:, :6], y1[:, :6])
    xc, w = torch.randn(1, 12, L, generator=g), torch.randn(12, 4, generator=g)  # (B, C, L), (C, W)
    c1 = hf_adapters.conv1d_fn(xc, w, None, activation="silu", seq_idx=seq_idx)
    assert torch.equal(c1, hf_adapters.conv1d_fn(xc, w, None, activation="silu", cu_seqlens=cu))
    assert c1.shape == (1, 12, L)
    with pytest.raises(ValueError, match="seq_idx and cu_seqlens .* different"):
        hf_adapters.chunk_scan(x, dt, A, B, C, 8, seq_idx=torch.zeros(1, L, dtype=torch.int32), cu_seqlens=cu)
    with pytest.raises(ValueError, match=r"cu_seqlens must run from 0 to seqlen 20, got \[0, 6, 15\]"):
        hf_adapters.conv1d_fn(xc, w, cu_seqlens=cu[:3])


def test_adapter_errors_name_the_argument():
    x, w = torch.randn(2, 12, 5), torch.randn(12, 4)
    with pytest.raises(ValueError, match=r"activation must be None, 'silu' or 'swish'.*'gelu'"):
        hf_adapters.conv1d_fn(x, w, activation="gelu")
    with pytest.raises(NotImplementedError, match="cache_seqlens"):
        hf_adapters.conv1d_update(x[:, :, 0], torch.zeros(2, 12, 4), w, cache_seqlens=torch.zeros(2))
    with pytest.raises(ValueError, match=r"headdim must be given"):
        hf_adapters.split_conv1d_scan_combined(torch.randn(1, 4, 10), w, None, torch.zeros(2), torch.zeros(2),
                                               torch.ones(2), 8)
