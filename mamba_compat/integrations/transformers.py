"""`patch_transformers()`: transformers' Mamba-2 mixers on mamba_compat's scan, conv and decode step.

    import mamba_compat
    patched = mamba_compat.patch_transformers()        # {"mamba2": ["causal_conv1d_fn", ...], ...}
    model = AutoModelForCausalLM.from_config(cfg)       # before or after the call: the mixers look the
    ...                                                 # functions up as module globals at call time
    mamba_compat.unpatch_transformers()                 # puts back exactly what was there

In transformers 5.24 the mixers of the families below call five module-level functions of their modeling
module (each HF's torch code behind `use_kernel_func_from_hub_with_fallback`, which picks mamba_ssm /
causal_conv1d when installed). The training path calls `mamba2_split_conv1d_scan_combined` first and takes
the unfused path only when it returns None (the torch stub does); our adapter returns the output, so training
runs fused like mamba_ssm. Before patching, every function's signature and every call the mixer makes to it
are checked against what the adapters accept; a transformers outside SUPPORTED is refused.
"""
from __future__ import annotations

import ast
import importlib
import inspect
import textwrap

from . import hf_adapters

__all__ = ["patch_transformers", "unpatch_transformers", "FAMILIES", "SUPPORTED"]

SUPPORTED = ((5, 24),)  # (major, minor) versions whose signatures below were read and tested

# family -> the mixer class calling the functions (in transformers.models.<family>.modeling_<family>)
FAMILIES = {
    "mamba2": "Mamba2Mixer",
    "bamba": "BambaMixer",
    "falcon_h1": "FalconH1Mixer",
    "granitemoehybrid": "GraniteMoeHybridMambaLayer",
    "nemotron_h": "NemotronHMamba2Mixer",
    "zamba2": "Zamba2MambaMixer",
}

# module attribute -> (our adapter, the parameters of HF's torch function in 5.24)
_KW = "**kwargs"
FUNCTIONS = {
    "causal_conv1d_fn": (hf_adapters.conv1d_fn, ("hidden_states", "weight", "bias", "activation", _KW)),
    "causal_conv1d_update": (hf_adapters.conv1d_update,
                             ("hidden_states", "conv_state", "weight", "bias", "activation")),
    "mamba2_split_conv1d_scan_combined": (hf_adapters.split_conv1d_scan_combined, (
        "zxbcdt", "conv1d_weight", "conv1d_bias", "dt_bias", "A", "D", "chunk_size", "initial_states", "dt_limit",
        "return_final_states", "activation", "rmsnorm_weight", "rmsnorm_eps", "outproj_weight", "outproj_bias",
        "headdim", "ngroups", "norm_before_gate", _KW)),
    "mamba2_selective_state_update": (hf_adapters.state_update, (
        "state", "hidden_states", "dt", "A", "B", "C", "D", "dt_bias", "dt_softplus", "z", _KW)),
    "mamba2_chunk_scan": (hf_adapters.chunk_scan, (
        "hidden_states", "dt", "A", "B", "C", "chunk_size", "D", "dt_bias", "initial_states", "dt_softplus",
        "dt_limit", "return_final_states", _KW)),
}

_originals: dict = {}  # (module name, attribute) -> what was there before the first patch


class UnsupportedTransformers(RuntimeError):
    """The installed transformers' mixers call the functions in a way patch_transformers does not know."""


def _params(fn) -> tuple:
    """fn's parameter names, '**kwargs' for a VAR_KEYWORD (inspect follows functools.wraps' __wrapped__)."""
    return tuple(_KW if p.kind is p.VAR_KEYWORD else p.name for p in inspect.signature(fn).parameters.values())


def _calls(mixer_cls, name: str) -> list:
    """(number of positional args, keyword names) of each call `name(...)` in mixer_cls.forward's source."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(mixer_cls.forward)))
    return [(len(node.args), tuple(k.arg for k in node.keywords if k.arg is not None))
            for node in ast.walk(tree)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == name]


def _check_version(version: str) -> None:
    try:
        major_minor = tuple(int(v) for v in version.split(".")[:2])
    except ValueError:
        major_minor = None
    if major_minor not in SUPPORTED:
        known = ", ".join(f"{a}.{b}.x" for a, b in SUPPORTED)
        raise UnsupportedTransformers(
            f"mamba_compat.patch_transformers knows the mixer call signatures of transformers {known}; the installed "
            f"transformers is {version}. Install a supported version (pip install 'mamba-compat[hf]').")


def _check_module(family: str, module) -> None:
    """Every function exists with 5.24's parameters, and every call the mixer makes binds to our adapter."""
    mixer = getattr(module, FAMILIES[family], None)
    if mixer is None:
        raise UnsupportedTransformers(f"{module.__name__} has no {FAMILIES[family]} (the mixer patched for {family})")
    for name, (adapter, expected) in FUNCTIONS.items():
        fn = getattr(module, name, None)
        if fn is None:
            raise UnsupportedTransformers(f"{module.__name__} has no function {name}")
        found = _params(fn)
        if found != expected and fn is not adapter:
            raise UnsupportedTransformers(f"{module.__name__}.{name} takes {found}; patch_transformers knows {expected}")
        calls = _calls(mixer, name)
        if not calls:
            raise UnsupportedTransformers(f"{FAMILIES[family]}.forward does not call {name}")
        sig = inspect.signature(adapter)  # without **model_kwargs: every explicit keyword must be one we handle
        sig = sig.replace(parameters=[p for p in sig.parameters.values() if p.kind is not p.VAR_KEYWORD])
        for npos, keywords in calls:
            try:
                sig.bind(*range(npos), **dict.fromkeys(keywords))
            except TypeError as e:
                raise UnsupportedTransformers(f"{FAMILIES[family]}.forward calls {name} with {npos} positional "
                                              f"arguments and keywords {keywords}, which our adapter cannot take: {e}")


def _modules(models) -> dict:
    """family -> its modeling module: all installed families (models=None) or the names given."""
    if models is None:
        names, required = list(FAMILIES), False
    else:
        names = [models] if isinstance(models, str) else list(models)
        unknown = [n for n in names if n not in FAMILIES]
        if unknown:
            raise ValueError(f"models must name families among {sorted(FAMILIES)}, got unknown {unknown}")
        required = True
    found = {}
    for family in names:
        try:
            found[family] = importlib.import_module(f"transformers.models.{family}.modeling_{family}")
        except ModuleNotFoundError as e:
            if required or not e.name or not e.name.startswith("transformers.models."):
                raise
    return found


def patch_transformers(models=None) -> dict:
    """Make transformers' Mamba-2 mixers call mamba_compat's ops (reversible with unpatch_transformers).

    Args:
        models: None (every family of FAMILIES the installed transformers has), a family name or a list of them
    Returns:
        {family: [patched module attribute names]}
    Raises:
        UnsupportedTransformers: a transformers version or call signature it does not know (nothing is patched)
    """
    import transformers

    _check_version(transformers.__version__)
    modules = _modules(models)
    for family, module in modules.items():  # check all first, so a refusal patches nothing
        _check_module(family, module)
    patched = {}
    for family, module in modules.items():
        for name, (adapter, _) in FUNCTIONS.items():
            _originals.setdefault((module.__name__, name), getattr(module, name))
            setattr(module, name, adapter)
        patched[family] = list(FUNCTIONS)
    return patched


def unpatch_transformers() -> dict:
    """Put back every attribute patch_transformers replaced. Returns {family: [restored names]}."""
    restored = {}
    for (module_name, name), original in list(_originals.items()):
        setattr(importlib.import_module(module_name), name, original)
        family = module_name.split(".")[2]
        restored.setdefault(family, []).append(name)
        del _originals[(module_name, name)]
    return restored
