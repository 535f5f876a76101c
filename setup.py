"""Build script: pure-Python package everywhere; the Metal extension (csrc/metal) on macOS with MPS.

torch is imported only when an extension is really built, so `pip install -e . --no-build-isolation`
on Linux needs nothing compiled. Set MAMBA_COMPAT_SKIP_METAL=1 to skip the Metal build on a Mac,
DEBUG=1 to build it with -O0 -g.
"""
import os
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def want_metal() -> bool:
    return sys.platform == "darwin" and os.environ.get("MAMBA_COMPAT_SKIP_METAL", "0") != "1"


def get_extensions():
    if not want_metal():
        return [], {}
    import torch  # noqa: F401  (only on macOS, only when building)
    from torch.utils.cpp_extension import BuildExtension, CppExtension

    if not torch.backends.mps.is_built():
        print("mamba-compat: this torch has no MPS support; skipping the Metal extension")
        return [], {}
    debug = os.environ.get("DEBUG", "0") == "1"
    metal_dir = os.path.join(ROOT, "csrc", "metal")
    sources = [os.path.join("csrc", "metal", f) for f in sorted(os.listdir(metal_dir)) if f.endswith(".mm")]
    if not sources:
        return [], {}
    # The MSL source is embedded as string literals (csrc/metal/embed_msl.py) and compiled at load time with
    # newLibraryWithSource: no Metal toolchain beyond the Xcode command-line tools' clang is needed.
    sys.path.insert(0, metal_dir)
    try:
        from embed_msl import write_header
    finally:
        sys.path.pop(0)
    gen_dir = os.path.join(ROOT, "build", "mamba_compat_metal_generated")
    write_header(os.path.join(gen_dir, "msl_source.h"))
    ext = CppExtension(
        name="mamba_compat._metal",
        sources=sources,
        include_dirs=[metal_dir, gen_dir],
        # no -std flag: BuildExtension adds the C++ standard the installed torch's headers need
        extra_compile_args={"cxx": ["-ObjC++", "-fobjc-arc"] + (["-O0", "-g"] if debug else ["-O3"])},
        extra_link_args=["-framework", "Metal", "-framework", "Foundation"],
    )
    return [ext], {"build_ext": BuildExtension}


ext_modules, cmdclass = get_extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
