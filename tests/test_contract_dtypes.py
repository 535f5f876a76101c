"""The op contract's dtypes on every backend this machine runs (DESIGN §1): y and gradients in their input's dtype,
final states float32 (float64 for float64 inputs where a backend takes them), the decode step's output in x's dtype
and the state's own dtype kept; and the registered fake (meta) kernels promise exactly what the real call returns,
so torch.compile plans with the right dtypes."""
import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import mamba_compat
from mamba_compat import mamba_chunk_scan_combined, selective_state_update
from mamba_compat.backends import BackendUnavailable, KERNEL_DTYPES

from op_testing import make_problem

DEV = "cuda" if torch.cuda.is_available() else "cpu"
BACKENDS = mamba_compat.backend_info()["devices"][DEV]["available"]
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]


def _scan(kw, backend):
    return mamba_chunk_scan_combined(kw["x"], kw["dt"], kw["A"], kw["B"], kw["C"], 8, D=kw["D"], z=kw["z"],
                                     dt_bias=kw["dt_bias"], initial_states=kw["initial_states"], dt_softplus=True,
                                     return_final_states=True, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_scan_dtypes_real_and_fake(backend, dtype):
    kw = make_problem(b=1, l=9, h=2, p=8, g=1, n=8, dtype=dtype, device=DEV, requires_grad=True)
    if dtype not in KERNEL_DTYPES and backend in ("triton", "metal"):
        with pytest.raises(BackendUnavailable, match="float64"):
            _scan(kw, backend)
        return
    y, final = _scan(kw, backend)
    state_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    assert (y.dtype, final.dtype) == (dtype, state_dtype)
    leaves = [v for v in kw.values() if torch.is_tensor(v) and v.requires_grad]
    grads = torch.autograd.grad(y.float().sum() + final.sum(), leaves)
    assert [g.dtype for g in grads] == [v.dtype for v in leaves]
    plain = {k: v.detach() for k, v in kw.items()}
    mode = FakeTensorMode()
    fake = {k: mode.from_tensor(v) for k, v in plain.items()}
    with mode:
        y_f, final_f = _scan(fake, backend)
    assert (y_f.dtype, final_f.dtype, tuple(y_f.shape), tuple(final_f.shape)) == (
        y.dtype, final.dtype, tuple(y.shape), tuple(final.shape))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("state_dtype", [torch.float32, torch.bfloat16], ids=str)
def test_decode_dtypes(backend, dtype, state_dtype):
    b, h, p, n = 2, 2, 8, 8
    state = torch.randn(b, h, p, n, device=DEV).to(state_dtype)
    x = torch.randn(b, h, p, device=DEV).to(dtype)
    dt = torch.rand(b, h, p, device=DEV).to(dtype)
    A = -torch.rand(h, p, n, device=DEV)
    Bm, Cm = torch.randn(b, 1, n, device=DEV), torch.randn(b, 1, n, device=DEV)
    if dtype not in KERNEL_DTYPES and backend in ("triton", "metal"):
        with pytest.raises(BackendUnavailable, match="float64"):
            selective_state_update(state, x, dt, A, Bm, Cm, backend=backend)
        return
    before = state.clone()
    out = selective_state_update(state, x, dt, A, Bm, Cm, dt_softplus=True, backend=backend)
    assert out.dtype == dtype and state.dtype == state_dtype and tuple(out.shape) == (b, h, p)
    assert not torch.equal(state, before)  # written in place
