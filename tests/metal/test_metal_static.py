"""Static checks of the Metal sources that need no GPU: threadgroup memory of every kernel for every chunk
length ssd_params.h accepts (<= 32 KB, Apple GPUs' limit), the 32-bit index limit of every buffer of the
launch plan (ssd_host.h's size_error, the check the glue makes), and settings of the glue (ssd_metal.mm,
not compiled here, so read as text)."""
from __future__ import annotations

import ctypes
import re
import subprocess

import pytest

from shim_build import METAL_DIR, Shim, compiler

TG_LIMIT = 32768  # bytes of threadgroup memory per threadgroup on Apple GPUs (maxThreadgroupMemoryLength)
MSL_SIZES = {"float": 4, "int": 4, "uint": 4, "half": 2, "float2": 8}
DECL = re.compile(r"^\s*threadgroup\s+(\w+)\s+(\w+)((?:\[[^\]]+\])+);", re.M)


def threadgroup_arrays():
    """{kernel: [(type, name, dims)]} for every `threadgroup T name[..]..;` inside a kernel body."""
    out = {}
    for f in sorted(METAL_DIR.glob("*.metal")):
        parts = re.split(r"^kernel void (\w+)\(", f.read_text(), flags=re.M)
        for name, body in zip(parts[1::2], parts[2::2]):
            out[name] = DECL.findall(body)
    return out


def _compile_sizes(tmp_path, q):
    """Builds a program against ssd_params.h with -DSSD_Q=q that prints each kernel's threadgroup bytes
    (every array rounded up to 16 bytes): {kernel: bytes}, or None if the header refuses q."""
    arrays = threadgroup_arrays()
    lines = ['#include <cstdio>', '#include "ssd_params.h"', "static size_t r16(size_t n) { return (n + 15) / 16 * 16; }",
             "int main() {"]
    for k, decls in arrays.items():
        terms = " + ".join(f"r16({MSL_SIZES[t]} * sizeof(char{dims}))" for t, _, dims in decls) or "0"
        lines.append(f'    std::printf("{k} %zu\\n", (size_t)({terms}));')
    lines.append("}")
    src = tmp_path / f"tg_{q}.cpp"
    src.write_text("\n".join(lines) + "\n")
    exe = tmp_path / f"tg_{q}"
    res = subprocess.run([compiler(), "-std=c++17", f"-DSSD_Q={q}", f"-I{METAL_DIR}", str(src), "-o", str(exe)],
                         capture_output=True, text=True)
    if res.returncode != 0:
        assert "SSD_Q must be" in res.stderr, res.stderr[-2000:]
        return None
    run = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout.split()
    return {k: int(v) for k, v in zip(run[::2], run[1::2])}


@pytest.fixture(scope="module")
def need_cxx():
    if compiler() is None:
        pytest.skip("no C++ compiler")


def test_threadgroup_memory_within_32k_for_every_allowed_chunk_length(tmp_path, need_cxx):
    arrays = threadgroup_arrays()
    planned = set(re.findall(r'dispatch\("(\w+)"', (METAL_DIR / "ssd_host.h").read_text()))
    assert set(arrays) == planned and len(planned) == 11  # every kernel the plan launches, no other
    assert all(t in MSL_SIZES for d in arrays.values() for t, _, _ in d)
    assert {n for _, n, _ in arrays["ssd_bmm_chunk"]} == {"rt", "ct"}  # the parser sees the arrays
    allowed = {}
    for q in range(8, 257, 8):
        sizes = _compile_sizes(tmp_path, q)
        if sizes is not None:
            allowed[q] = sizes
    assert sorted(allowed) == list(range(8, 65, 8))  # ssd_params.h refuses 72..256
    table = "\n".join(f"Q={q:3d} " + " ".join(f"{k}={v}" for k, v in s.items()) for q, s in allowed.items())
    print(table)
    for q, sizes in allowed.items():
        for k, v in sizes.items():
            assert v <= TG_LIMIT, f"{k} at SSD_Q={q}: {v} bytes of threadgroup memory > {TG_LIMIT}"
    assert allowed[64]["ssd_bmm_chunk"] == 2 * 64 * 36 * 4  # 18432: the largest, 288 * Q
    assert max(max(s.values()) for s in allowed.values()) == 18432


def test_chunk_length_above_64_is_refused(tmp_path, need_cxx):
    # 128 was allowed before (<= 256): ssd_bmm_chunk alone would need 36864 bytes there
    assert _compile_sizes(tmp_path, 128) is None and _compile_sizes(tmp_path, 12) is None


def _size_error(lib, shape):
    err = ctypes.create_string_buffer(1024)
    rc = lib.shim_size_error(*[ctypes.c_long(v) for v in shape], err, 1024)
    return rc, err.value.decode()


@pytest.mark.parametrize("shape,buffer", [
    ((1, 131072, 16, 256, 1, 256), "chunk states"),  # x 2^29, B 2^25, states 2^31
    ((1, 140000, 256, 1, 1, 1), "dux"),              # x 3.6e7, dy.x^T per chunk 2.3e9
    ((1, 2**21, 1024, 1, 1, 1), "x / z / y"),         # x itself 2^31
], ids=["states", "dux", "x"])
def test_buffers_over_2_31_elements_are_refused(shim_default, shape, buffer):
    lib = shim_default.lib
    rc, msg = _size_error(lib, shape)
    assert rc == 1 and buffer in msg, msg
    b, L, H, P, G, N = shape
    assert f"batch={b} seqlen={L} nheads={H} headdim={P} ngroups={G} dstate={N}" in msg, msg


def test_shape_just_under_the_limit_is_accepted(shim_default):
    assert _size_error(shim_default.lib, (1, 131072 - 64, 16, 256, 1, 256)) == (0, "")  # states 16*2047*2^16
    assert _size_error(shim_default.lib, (1, 131072, 16, 256, 1, 256))[0] == 1


def test_forward_entry_point_refuses_before_allocating(shim_default):
    """The harness's forward (the glue's plan) goes through the same check: a refused shape fails with the
    message, without touching the (NULL) buffers or allocating scratch."""
    null = ctypes.c_void_p(0)
    err = ctypes.create_string_buffer(512)
    rc = shim_default.lib.shim_ssd_fwd(1, 140000, 256, 1, 1, 1, 0, 0, ctypes.c_float(0), ctypes.c_float(0), 0,
                                       *([null] * 12), err, 512)
    assert rc == 1 and "dux" in err.value.decode()


GLUE = (METAL_DIR / "ssd_metal.mm").read_text()


def _function(name):
    m = re.search(rf"^\S.*\b{name}\([^;{{]*\)\s*\{{\n(.*?)^\}}", GLUE, re.S | re.M)
    assert m, name
    return m.group(1)


def test_glue_checks_every_buffer_size():
    body = _function("params_for")
    assert "ssd_host::size_error(p)" in body and "TORCH_CHECK(size_err.empty()" in body
    assert "return p;" in body.split("size_error")[1]


def test_glue_pins_ieee_math():
    """The double-float cumsum needs additions that are not reassociated: the library is compiled with
    mathMode = safe (macOS 15+) or fastMathEnabled = NO, never the fast-math default."""
    body = _function("set_ieee_math")
    assert "opts.mathMode = MTLMathModeSafe;" in body and "opts.fastMathEnabled = NO;" in body
    lib = _function("library_locked")
    assert lib.index("set_ieee_math(opts);") < lib.index("newLibraryWithSource")
    assert "MTLMathModeFast" not in GLUE and "fastMathEnabled = YES" not in GLUE
    assert "staticThreadgroupMemoryLength <= L.device.maxThreadgroupMemoryLength" in GLUE
