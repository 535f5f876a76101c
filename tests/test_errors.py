"""Malformed calls: each raises ValueError/TypeError naming the argument and the shapes seen."""
import math

import pytest
import torch

import mamba_compat
from mamba_compat import BackendUnavailable, mamba_chunk_scan_combined, selective_state_update

from op_testing import make_problem


def base(**over):
    kw = make_problem(b=2, l=10, h=4, p=3, g=2, n=5, dtype=torch.float32)
    kw["chunk_size"] = 4
    kw.update(over)
    return kw


f32 = torch.float32
SSD_CASES = [
    ("x rank", dict(x=torch.randn(2, 10, 12)), ValueError, r"x must be \(batch, seqlen, nheads, headdim\).*\(2, 10, 12\)"),
    ("empty seqlen", dict(x=torch.randn(2, 0, 4, 3)), ValueError, r"x must have seqlen >= 1.*\(2, 0, 4, 3\)"),
    ("dt shape", dict(dt=torch.randn(2, 10, 3)), ValueError, r"dt must have shape \(batch, seqlen, nheads\) = \(2, 10, 4\), got \(2, 10, 3\)"),
    ("A shape", dict(A=torch.randn(4, 3)), ValueError, r"A must have shape \(nheads,\) = \(4,\), got \(4, 3\)"),
    ("B seqlen", dict(B=torch.randn(2, 9, 2, 5)), ValueError, r"B must have shape .* got \(2, 9, 2, 5\)"),
    ("groups", dict(B=torch.randn(2, 10, 3, 5), C=torch.randn(2, 10, 3, 5)), ValueError, r"nheads \(4\) must be divisible by ngroups \(3\)"),
    ("C shape", dict(C=torch.randn(2, 10, 2, 6)), ValueError, r"C must have shape .*\(2, 10, 2, 5\), got \(2, 10, 2, 6\)"),
    ("D shape", dict(D=torch.randn(3)), ValueError, r"D must have shape \(nheads,\) = \(4,\) or \(nheads, headdim\) = \(4, 3\), got \(3,\)"),
    ("z shape", dict(z=torch.randn(2, 10, 4, 2)), ValueError, r"z must have shape .* got \(2, 10, 4, 2\)"),
    ("dt_bias shape", dict(dt_bias=torch.randn(4, 3)), ValueError, r"dt_bias must have shape \(nheads,\) = \(4,\), got \(4, 3\)"),
    ("initial_states shape", dict(initial_states=torch.randn(2, 4, 3)), ValueError, r"initial_states must have shape \(batch, nheads, headdim, dstate\) = \(2, 4, 3, 5\), got \(2, 4, 3\)"),
    ("seq_idx float", dict(seq_idx=torch.zeros(2, 10)), TypeError, r"seq_idx must be an integer tensor.*float32"),
    ("seq_idx shape", dict(seq_idx=torch.zeros(2, 9, dtype=torch.int32)), ValueError, r"seq_idx must have shape \(batch, seqlen\) = \(2, 10\), got \(2, 9\)"),
    ("dt_limit nan", dict(dt_limit=(0.0, math.nan)), ValueError, r"dt_limit must be finite"),
    ("dt_limit -inf", dict(dt_limit=(-math.inf, 1.0)), ValueError, r"dt_limit must be finite"),
    ("dt_limit order", dict(dt_limit=(1.0, 0.5)), ValueError, r"dt_limit must satisfy min <= max"),
    ("dt_limit type", dict(dt_limit=0.5), TypeError, r"dt_limit must be a pair"),
    ("integer x", dict(x=torch.ones(2, 10, 4, 3, dtype=torch.int64)), TypeError, r"x must be a floating tensor.*int64.*\(2, 10, 4, 3\)"),
    ("integer dt", dict(dt=torch.ones(2, 10, 4, dtype=torch.int32)), TypeError, r"dt must be a floating tensor.*int32"),
    ("not a tensor", dict(B=[[1.0]]), TypeError, r"B must be a torch.Tensor, got list"),
    ("mixed dtypes", dict(x=torch.randn(2, 10, 4, 3, dtype=torch.bfloat16)), TypeError, r"x, B, C \(and z\) must share one dtype; got x: torch.bfloat16, B: torch.float32"),
    ("mixed devices", dict(A=torch.randn(4, device="meta")), ValueError, r"all tensors must be on one device; got .*A on meta"),
    ("chunk_size 0", dict(chunk_size=0), ValueError, r"chunk_size must be a positive int, got 0"),
    ("chunk_size float", dict(chunk_size=16.0), ValueError, r"chunk_size must be a positive int, got 16.0"),
]


@pytest.mark.parametrize("name,over,exc,pattern", SSD_CASES, ids=[c[0] for c in SSD_CASES])
def test_ssd_bad_input(name, over, exc, pattern):
    with pytest.raises(exc, match=pattern):
        mamba_chunk_scan_combined(**base(**over))


def test_ssd_cu_seqlens_not_supported():
    with pytest.raises(NotImplementedError, match="seq_idx"):
        mamba_chunk_scan_combined(**base(), cu_seqlens=torch.tensor([0, 5, 10]))


def su_base(**over):
    kw = dict(state=torch.randn(2, 4, 8, 16), x=torch.randn(2, 4, 8), dt=torch.randn(2, 4, 8),
              A=-torch.rand(4, 8, 16), B=torch.randn(2, 2, 16), C=torch.randn(2, 2, 16))
    kw.update(over)
    return kw


SU_CASES = [
    ("state rank", dict(state=torch.randn(2, 16)), ValueError, r"state must be .*got shape \(2, 16\)"),
    ("x shape", dict(x=torch.randn(2, 4, 7)), ValueError, r"x must have shape .*\(2, 4, 8\).*got \(2, 4, 7\)"),
    ("dt shape", dict(dt=torch.randn(2, 4)), ValueError, r"dt must have shape x's shape = \(2, 4, 8\), got \(2, 4\)"),
    ("A shape", dict(A=torch.randn(4, 8)), ValueError, r"A must have shape \(nheads, dim, dstate\) = \(4, 8, 16\), got \(1, 4, 8\)"),
    ("B batch", dict(B=torch.randn(3, 2, 16)), ValueError, r"B must have shape \(batch, ngroups, dstate\) with batch=2, dstate=16, got \(3, 2, 16\)"),
    ("groups", dict(B=torch.randn(2, 3, 16), C=torch.randn(2, 3, 16)), ValueError, r"nheads \(4\) must be divisible by ngroups \(3\)"),
    ("indices float", dict(state_batch_indices=torch.zeros(2)), TypeError, r"state_batch_indices must be an integer tensor"),
    ("cache without indices", dict(state=torch.randn(5, 4, 8, 16)), ValueError, r"state has batch 5 but x has batch 2; pass state_batch_indices"),
    ("D shape", dict(D=torch.randn(4, 7)), ValueError, r"D must have shape \(nheads, dim\) = \(4, 8\), got \(4, 7\)"),
]


@pytest.mark.parametrize("name,over,exc,pattern", SU_CASES, ids=[c[0] for c in SU_CASES])
def test_state_update_bad_input(name, over, exc, pattern):
    with pytest.raises(exc, match=pattern):
        selective_state_update(**su_base(**over))


def test_forcing_unavailable_backend_raises_with_reason(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    mamba_compat.set_backend("triton")
    with pytest.raises(BackendUnavailable, match=r"backend 'triton' was requested but cannot run: triton runs on CUDA"):
        mamba_chunk_scan_combined(**base())
    mamba_compat.set_backend("metal")
    with pytest.raises(BackendUnavailable, match=r"metal runs on MPS tensors \(got cpu\)"):
        mamba_chunk_scan_combined(**base())
    with pytest.raises(BackendUnavailable, match=r"metal runs on MPS tensors"):
        selective_state_update(**su_base())


def test_unknown_backend_name(monkeypatch):
    with pytest.raises(ValueError, match=r"unknown backend 'cuda'; choose one of auto, cpu, reference, naive, triton, metal"):
        mamba_compat.set_backend("cuda")
    monkeypatch.setenv("MAMBA_COMPAT_BACKEND", "fast")
    with pytest.raises(ValueError, match=r"unknown backend 'fast'"):
        mamba_chunk_scan_combined(**base())


def test_per_call_backend_is_checked_alike_for_both_ops():
    """backend= goes through one resolution for both ops: 'auto' picks, an unknown name is refused."""
    out = selective_state_update(**su_base(), backend="auto")
    assert out.shape == (2, 4, 8)
    with pytest.raises(ValueError, match=r"unknown backend 'fast'"):
        selective_state_update(**su_base(), backend="fast")
    with pytest.raises(ValueError, match=r"unknown backend 'fast'"):
        mamba_chunk_scan_combined(**base(), backend="fast")
