"""Test configuration. TRITON_INTERPRET must be set before any @triton.jit decorates, so it is set here,
before the package is imported, whenever there is no CUDA device: the Triton kernels then run (slowly)
on CPU tensors and are compared with the reference like on a GPU."""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

import mamba_compat  # noqa: E402


@pytest.fixture(autouse=True)
def _reset_backend():
    """Every test starts from automatic backend choice."""
    mamba_compat.set_backend(None)
    yield
    mamba_compat.set_backend(None)
