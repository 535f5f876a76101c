"""Mutations that the shim of 2026-12-01 (commit 4d96ca9: `#define threadgroup static`, groups in grid
order one at a time, -Wno-attributes, parameters bound by position) PASSED, and the present shim catches.
Each docstring says what the old shim did with it; `python tests/metal/blind_spots_vs_old_shim.py` rebuilds
every mutant against that old shim (from git) and prints what it measured, to re-check those claims.

A mutation is (file, old text, new text) (or tuples of them) applied to a copy of csrc/metal; its probe runs the mutant and
returns the error against the float64 oracle (inf for a NaN), raising ShimError or MslError where the shim
refuses it."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

import msl_kernels
from oracle import make_inputs, naive_fwd, naive_grads
from shim_build import METAL_DIR, ShimError

SHAPE = (2, 37, 4, 8, 2, 16)  # N = 16 < SSD_TI = 32: the bmm tiles have padding columns; 3 chunks at Q = 16


def _err(out, ref):
    out = np.asarray(out, np.float64)
    if not np.isfinite(out).all():
        return np.inf
    return float(np.abs(out - ref).max()) / max(1.0, float(np.abs(ref).max()))


def fwd_probe(shim):
    inp = make_inputs(1, *SHAPE)
    y, fin = shim.ssd_fwd(inp["x"], inp["dt"], inp["A"], inp["B"], inp["C"], inp["D"], inp["z"], inp["dt_bias"],
                          inp["initial_states"], inp["seq_idx"], dt_softplus=True)
    y_ref, fin_ref = naive_fwd(inp, True)
    return max(_err(y, y_ref), _err(fin, fin_ref))


def bwd_probe(shim):
    inp = make_inputs(2, *SHAPE)
    rng = np.random.default_rng(3)
    dy = rng.standard_normal(inp["x"].shape).astype(np.float32)
    dfinal = rng.standard_normal(inp["initial_states"].shape).astype(np.float32)
    grads = shim.ssd_bwd(dy, dfinal, inp["x"], inp["dt"], inp["A"], inp["B"], inp["C"], inp["D"], inp["z"],
                         inp["dt_bias"], inp["initial_states"], inp["seq_idx"], dt_softplus=True)
    refs = naive_grads(inp, dy, dfinal, True)
    return max(_err(g, r) for g, r in zip(grads, refs) if r is not None)


# name -> (file, old, new, probe, what the present shim reports)
MUTATIONS = {
    # (a) uninitialised threadgroup memory: the bmm tiles' padding columns (i >= I = 16) left unwritten
    "bmm_padding_unwritten": (
        "ssd_fwd.metal",
        "            rt[r][i] = ok ? float(row[g]) : 0.0f;\n            ct[r][i] = ok ? float(col[g]) : 0.0f;",
        "            if (ok) {\n                rt[r][i] = float(row[g]);\n                ct[r][i] = float(col[g]);\n"
        "            }",
        fwd_probe, "NaN"),
    # (a) an index past a tile's end: ssd_bwd_dbdc's dB loop runs one position too far (t2 <= SSD_Q)
    "loop_reads_past_tile": (
        "ssd_bwd.metal",
        "for (int t2 = t; t2 < SSD_Q; ++t2)\n            if (rcs[t2] == rct)",
        "for (int t2 = t; t2 <= SSD_Q; ++t2)\n            if (rcs[t2] == rct)",
        bwd_probe, "index 16 out of [0, 16)"),
    # (b) group order: each chunk's group also writes the first cumsum slot of the next chunk (a "carry"),
    # right only if the next chunk's group runs later and overwrites it
    "halo_write_into_next_group": (
        "ssd_fwd.metal",
        "    const int o = ssd_sidx(p, b, h, c, t);\n    dtp[o] = v;",
        "    if (t == SSD_Q - 1 && c + 1 < p.nchunks) cs[ssd_sidx(p, b, h, c + 1, 0)] = sa[cur][t];\n"
        "    const int o = ssd_sidx(p, b, h, c, t);\n    dtp[o] = v;",
        fwd_probe, "wrong values"),
    # (c) a misspelt attribute: g++ ignored it under -Wno-attributes, the harness passed the value by position
    "misspelt_attribute": (
        "ssd_fwd.metal",
        "uint sgi [[simdgroup_index_in_threadgroup]]) {",
        "uint sgi [[simd_group_index_in_threadgroup]]) {",
        fwd_probe, "MslError"),
    # (c)/(d) position attributes swapped: Metal binds by attribute, the old harness by position
    "swapped_position_attributes": (
        "ssd_bwd.metal",
        "uint lane [[thread_index_in_simdgroup]],\n                               uint sgi [[simdgroup_index_in_threadgroup]]",
        "uint lane [[simdgroup_index_in_threadgroup]],\n                               uint sgi [[thread_index_in_simdgroup]]",
        bwd_probe, "index 8 out of [0, 8)"),
    # (d) buffer indices swapped: on the GPU row = buffer 1 = B and col = C, so CB becomes B.C^T
    "swapped_buffer_indices": (
        "ssd_fwd.metal",
        "device const in_t* row [[buffer(0)]],\n                          device const in_t* col [[buffer(1)]]",
        "device const in_t* row [[buffer(1)]],\n                          device const in_t* col [[buffer(0)]]",
        fwd_probe, "wrong values"),
    # (d) the params one index too far: unbound on the GPU
    "params_index_gap": (
        "ssd_fwd.metal",
        "constant SsdParams& p [[buffer(7)]],\n                          uint3 tg",
        "constant SsdParams& p [[buffer(8)]],\n                          uint3 tg",
        fwd_probe, "not bound"),
    # (f) device memory between the threads of a group, ordered by a mem_threadgroup barrier only:
    # ssd_bwd_dcs stages yoff in its dA_part output instead of threadgroup memory
    "device_staging_threadgroup_fence": (
        "ssd_bwd.metal",
        ("    dcs[t] = yoff;\n    threadgroup_barrier(mem_flags::mem_threadgroup);",
         "    for (int k = t; k < SSD_Q; ++k) da += dcs[k];\n    for (int j = 0; j < t; ++j) da += vs[j];\n"),
        ("    dA_part[base + t] = yoff;\n    threadgroup_barrier(mem_flags::mem_threadgroup);",
         "    for (int k = t; k < SSD_Q; ++k) da += dA_part[base + k];\n    for (int j = 0; j < t; ++j) da += vs[j];\n"
         "    threadgroup_barrier(mem_flags::mem_threadgroup);  // every read done before the final writes\n"),
        bwd_probe, "no mem_device barrier"),
}


def mutant_dir(tmp: Path, name: str) -> Path:
    f, old, new, _, _ = MUTATIONS[name]
    src = Path(tmp) / f"metal_{name}"
    shutil.copytree(METAL_DIR, src)
    text = (src / f).read_text()
    for o, n in zip(*((old, new) if isinstance(old, tuple) else ((old,), (new,)))):
        assert text.count(o) == 1, f"mutation site of {name} not found (once) in {f}: {o!r}"
        text = text.replace(o, n)
    (src / f).write_text(text)
    return src


def _new_shim(src):
    from shim_build import SCHEDULE
    from shim_build import Shim, build

    return Shim(build(16, src_dir=src), **SCHEDULE)


def test_bmm_padding_unwritten_is_caught(tmp_path):
    """Old shim: passed (static arrays start at zero and no group ever writes columns 16..31, so the
    padding read as 0). Now every group's threadgroup arrays start as NaN: y is NaN."""
    assert fwd_probe(_new_shim(mutant_dir(tmp_path, "bmm_padding_unwritten"))) == np.inf


def test_loop_reading_past_its_tile_is_caught(tmp_path):
    """Old shim: passed (rcs[16] read the static storage after rcs, which happened not to equal the row's
    reset count, so the out-of-range term was skipped; a layout accident of g++). Now every index of a
    threadgroup array is checked."""
    with pytest.raises(ShimError, match=r"threadgroup array 'rcs': index 16 out of \[0, 16\)"):
        bwd_probe(_new_shim(mutant_dir(tmp_path, "loop_reads_past_tile")))


def test_halo_write_into_next_group_is_caught(tmp_path):
    """Old shim: passed (groups in grid order, chunk c + 1 always after c, so its own write won). Now caught
    twice over: the device-memory rule names the second write of the element by another group of the same
    dispatch, and, with that rule compiled out, the shuffled group order leaves some chunk's slot with its
    neighbour's value (while grid order, seed 0, still passes: the order is what catches it)."""
    src = mutant_dir(tmp_path, "halo_write_into_next_group")
    with pytest.raises(ShimError, match=r"ssd_dt_cumsum: thread \d+ of group .* writes a device element that "
                                        r"another threadgroup of the same dispatch wrote"):
        fwd_probe(_new_shim(src))
    from shim_build import Shim, build

    lib = build(16, src_dir=src, extra=("-DSHIM_NO_DEVICE_CHECK",))
    assert fwd_probe(Shim(lib, seed=0, resident=1)) < 2e-5
    assert fwd_probe(Shim(lib, seed=1, resident=1)) > 1e-2 and fwd_probe(Shim(lib, seed=1, resident=2)) > 1e-2


def test_misspelt_attribute_is_refused(tmp_path):
    """Old shim: passed (-Wno-attributes; the harness passed the simdgroup index by position). Now an
    attribute outside the known list is an error before anything is compiled."""
    with pytest.raises(msl_kernels.MslError, match=r"simd_group_index_in_threadgroup"):
        _new_shim(mutant_dir(tmp_path, "misspelt_attribute"))


def test_swapped_position_attributes_are_caught(tmp_path):
    """Old shim: passed (lane and simdgroup index passed by position). Now bound by attribute, as Metal does:
    lanes 8..31 of SIMD-group 0 index red[] with their lane."""
    with pytest.raises(ShimError, match=r"threadgroup array 'red': index 8 out of \[0, 8\)"):
        bwd_probe(_new_shim(mutant_dir(tmp_path, "swapped_position_attributes")))


def test_swapped_buffer_indices_are_caught(tmp_path):
    """Old shim: passed (buffers passed by position). Now [[buffer(n)]] picks entry n of the glue's table:
    row = B, col = C, so the chunk Gram matrix is transposed."""
    assert fwd_probe(_new_shim(mutant_dir(tmp_path, "swapped_buffer_indices"))) > 1e-2


def test_params_index_gap_is_caught(tmp_path):
    """Old shim: passed (params passed by position). Now: index 8 is not in the glue's table."""
    with pytest.raises(ShimError, match=r"ssd_dt_cumsum: \[\[buffer\(8\)\]\] is not bound"):
        fwd_probe(_new_shim(mutant_dir(tmp_path, "params_index_gap")))


def test_unmutated_sources_pass_every_probe(shim):
    """The probes themselves pass on the real kernels (so a failure above is the mutation's)."""
    assert fwd_probe(shim) < 2e-5 and bwd_probe(shim) < 5e-5


def test_device_memory_ordered_only_by_threadgroup_fence_is_caught(tmp_path):
    """Old shim: passed (every barrier acted as a full fence; threads ran one at a time, so each saw the
    others' device writes). Metal orders device memory between a group's threads only by a barrier with
    mem_device: now a read of another thread's device write without one fails. The same staging with
    threadgroup_barrier(mem_flags::mem_device) passes with the right values: the scope is modelled, not
    every shared device access refused."""
    src = mutant_dir(tmp_path, "device_staging_threadgroup_fence")
    with pytest.raises(ShimError, match=r"ssd_bwd_dcs: thread \d+ of group .* reads a device element written by "
                                        r"thread \d+ of its group with no threadgroup_barrier\(mem_flags::mem_device\)"):
        bwd_probe(_new_shim(src))
    text = (src / "ssd_bwd.metal").read_text()
    staged = "    dA_part[base + t] = yoff;\n    threadgroup_barrier(mem_flags::mem_threadgroup);"
    assert text.count(staged) == 1
    (src / "ssd_bwd.metal").write_text(text.replace(staged, staged.replace("mem_threadgroup", "mem_device")))
    assert bwd_probe(_new_shim(src)) < 5e-5
