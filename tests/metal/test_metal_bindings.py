"""Buffer indices, statically: every dispatch of the launch plan (csrc/metal/ssd_host.h) binds its buffers
the way the glue encodes them (csrc/metal/ssd_metal.mm, EncodeDev::dispatch: buffer i at index i, the
params bytes at index n), and that table must be exactly what the kernel declares: its pointer
parameters' [[buffer(k)]] are 0..n-1, its `constant T&` parameter is at n, no gaps, no duplicates, the same
count. Read as text (the glue is not compiled here), so it runs in CI without a Mac.

The shim (shim_build.py's generated binder) binds parameters by these same attributes and refuses a
mismatch at run time; this test names the mismatch without running anything, and for every dispatch, not
only those a test happens to reach."""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

import msl_kernels
from shim_build import METAL_DIR


def _split_top(s: str) -> list:
    """Comma-separated items of s at brace/paren depth 0."""
    items, depth, cur = [], 0, ""
    for ch in s:
        if ch in "({[":
            depth += 1
        elif ch in ")}]":
            depth -= 1
        if ch == "," and depth == 0:
            items.append(cur.strip())
            cur = ""
        else:
            cur += ch
    if cur.strip():
        items.append(cur.strip())
    return items


def plan_dispatches(host_text: str) -> list:
    """[(kernel, [buffer expressions])] for every dev.dispatch("k", plan, {bufs...}, &params, bytes)."""
    out = []
    for m in re.finditer(r'dev\.dispatch\(\s*"(\w+)"\s*,', host_text):
        i, depth = m.end(), 1
        while depth:  # the call's closing parenthesis
            depth += {"(": 1, ")": -1}.get(host_text[i], 0)
            i += 1
        args = _split_top(host_text[m.end():i - 1])
        assert len(args) == 4 and args[1].startswith("{") and args[1].endswith("}"), (m.group(1), args)
        out.append((m.group(1), _split_top(args[1][1:-1])))
    return out


def glue_binding_rule(glue_text: str) -> str:
    """The glue's one binding path, checked to be 'buffer i at index i, params at index n'."""
    sets = re.findall(r"\[enc setBuffer:[^\]]*\]", glue_text)
    bytes_ = re.findall(r"\[enc setBytes:[^\]]*\]", glue_text)
    assert len(sets) == 1 and len(bytes_) == 1, (sets, bytes_)  # no other binding path
    loop = re.search(r"for \(size_t (\w+) = 0; \1 < (\w+)\.size\(\); \+\+\1\)\s*\[enc setBuffer:(\2)\[\1\]\.buf "
                     r"offset:\2\[\1\]\.offset atIndex:(\w+)\];", glue_text)
    assert loop, "the glue's setBuffer loop is not `for i < bufs.size(): setBuffer:bufs[i] ... atIndex:i`"
    assert loop.group(4) == loop.group(1), f"buffer i is bound at atIndex:{loop.group(4)}, not at i"
    m = re.search(r"\[enc setBytes:(\w+) length:(\w+) atIndex:([^\]]+)\]", glue_text)
    assert m and m.group(3).strip() == f"{loop.group(2)}.size()", \
        f"params bound at atIndex:{m and m.group(3)}, not right after the buffers ({loop.group(2)}.size())"
    return "i -> i, params -> n"


def binding_errors(src_dir: Path) -> list:
    """Every disagreement between the plan's dispatches (as the glue binds them) and the kernels."""
    src_dir = Path(src_dir)
    glue_binding_rule((src_dir / "ssd_metal.mm").read_text())
    kernels = msl_kernels.all_kernels(src_dir)
    errors = []
    for name, bufs in plan_dispatches((src_dir / "ssd_host.h").read_text()):
        k = kernels.get(name)
        if k is None:
            errors.append(f"{name}: dispatched but no kernel of that name")
            continue
        n = len(bufs)
        ptrs = [p.index for p in k.params if p.attr == "buffer" and not p.type.endswith("&")]
        refs = [p.index for p in k.params if p.attr == "buffer" and p.type.endswith("&")]
        dups = sorted({i for i in ptrs + refs if (ptrs + refs).count(i) > 1})
        if dups:
            errors.append(f"{name}: [[buffer(n)]] used twice for n in {dups}")
        if sorted(ptrs) != list(range(n)):
            errors.append(f"{name}: the plan binds {n} buffers at 0..{n - 1}, the kernel's pointers are at "
                          f"{sorted(ptrs)}")
        if refs != [n]:
            errors.append(f"{name}: the glue binds the params at {n}, the kernel's constant reference is at {refs}")
        if [p.index for p in k.params if p.attr == "buffer"] != sorted(ptrs + refs):
            errors.append(f"{name}: buffer indices not in declaration order "
                          f"{[p.index for p in k.params if p.attr == 'buffer']}")
    return errors


def test_every_dispatch_matches_its_kernels_buffer_indices():
    dispatches = plan_dispatches((METAL_DIR / "ssd_host.h").read_text())
    assert len(dispatches) == 14 and len({k for k, _ in dispatches}) == 11  # the parser sees every call
    assert dict(dispatches)["ssd_bwd_dcs"][-1] == "out.dA_part"
    assert glue_binding_rule((METAL_DIR / "ssd_metal.mm").read_text()) == "i -> i, params -> n"
    assert binding_errors(METAL_DIR) == []


def _copy(tmp_path):
    dst = tmp_path / "metal"
    shutil.copytree(METAL_DIR, dst)
    return dst


def _edit(path: Path, old: str, new: str):
    text = path.read_text()
    assert text.count(old) == 1, old
    path.write_text(text.replace(old, new))


def test_gap_in_buffer_indices_is_caught(tmp_path):
    """Mutation: ssd_dt_cumsum's params at [[buffer(8)]] instead of 7 (a gap at 7). The old shim bound
    parameters by position and passed it (measured with blind_spots_vs_old_shim.py); on the GPU the kernel
    would read its params from an unbound index."""
    src = _copy(tmp_path)
    _edit(src / "ssd_fwd.metal", "constant SsdParams& p [[buffer(7)]],\n                          uint3 tg",
          "constant SsdParams& p [[buffer(8)]],\n                          uint3 tg")
    errs = binding_errors(src)
    assert any("ssd_dt_cumsum" in e and "constant reference is at [8]" in e for e in errs), errs


def test_swapped_buffer_indices_are_caught(tmp_path):
    """Mutation: ssd_bmm_chunk's row/col declared at buffer(1)/buffer(0) but in the old order. Same count,
    no gap: caught as 'not in declaration order' (the plan lists buffers in declaration order)."""
    src = _copy(tmp_path)
    _edit(src / "ssd_fwd.metal", "device const in_t* row [[buffer(0)]],\n                          device const in_t* col [[buffer(1)]]",
          "device const in_t* row [[buffer(1)]],\n                          device const in_t* col [[buffer(0)]]")
    errs = binding_errors(src)
    assert any("ssd_bmm_chunk" in e and "declaration order" in e for e in errs), errs


def test_plan_binding_one_buffer_too_many_is_caught(tmp_path):
    src = _copy(tmp_path)
    _edit(src / "ssd_host.h", "{in.C, in.B, s.cb}", "{in.C, in.B, s.cb, s.cs}")
    errs = binding_errors(src)
    assert any("ssd_bmm_chunk: the plan binds 4 buffers" in e for e in errs), errs


def test_glue_binding_params_elsewhere_is_caught(tmp_path):
    src = _copy(tmp_path)
    _edit(src / "ssd_metal.mm", "atIndex:bufs.size()]", "atIndex:bufs.size() + 1]")
    with pytest.raises(AssertionError, match="not right after the buffers"):
        binding_errors(src)
