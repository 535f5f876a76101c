"""mamba_compat: a drop-in Mamba-2 whose selective scan runs on CUDA (Triton), Apple MPS (Metal) and CPU.

    from mamba_compat import Mamba2
    from mamba_compat import mamba_chunk_scan_combined, selective_state_update
    mamba_compat.set_backend("reference")   # or MAMBA_COMPAT_BACKEND=reference
    mamba_compat.backend_info()
    mamba_compat.patch_transformers()       # transformers' Mamba-2 mixers on these ops (imports transformers then)
"""
from .backends import BackendUnavailable, backend_info, get_backend, set_backend
from .ops import mamba_chunk_scan_combined, selective_state_update

__version__ = "0.1.0"

__all__ = ["Mamba2", "mamba_chunk_scan_combined", "selective_state_update", "set_backend", "get_backend",
           "backend_info", "BackendUnavailable", "patch_transformers", "unpatch_transformers"]


def __getattr__(name):  # the module pulls in more; import it on first use
    if name == "Mamba2":
        from .modules.mamba2 import Mamba2
        return Mamba2
    if name in ("patch_transformers", "unpatch_transformers"):
        from . import integrations
        return getattr(integrations, name)
    raise AttributeError(name)
