"""Integrations with other libraries; each imports its library only when called.

    mamba_compat.patch_transformers()   # transformers' Mamba-2 mixers on our ops (integrations/transformers.py)
"""


def patch_transformers(models=None) -> dict:
    """See mamba_compat.integrations.transformers.patch_transformers."""
    from .transformers import patch_transformers as patch
    return patch(models)


def unpatch_transformers() -> dict:
    """See mamba_compat.integrations.transformers.unpatch_transformers."""
    from .transformers import unpatch_transformers as unpatch
    return unpatch()
