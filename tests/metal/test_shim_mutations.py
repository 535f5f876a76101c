"""The harness can fail: mutated copies of the kernels (a removed barrier, an off-by-one loop bound, a
barrier or simd function reached by only part of the threads) are compiled and must be caught, either as
wrong values against the oracle or as a ShimError from the simulated schedule."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from oracle import make_inputs, naive_fwd, naive_grads
from shim_build import METAL_DIR, Shim, ShimError, build

SHAPE = (2, 37, 4, 8, 2, 16)


def _mutant(tmp_path, filename, old, new, count=1):
    src = tmp_path / "metal"
    shutil.copytree(METAL_DIR, src)
    text = (src / filename).read_text()
    assert text.count(old) >= count, f"mutation site {old!r} not found in {filename}"
    (src / filename).write_text(text.replace(old, new, count))
    return Shim(build(16, src_dir=src))


def _fwd_error(shim):
    inp = make_inputs(1, *SHAPE)
    y, fin = shim.ssd_fwd(inp["x"], inp["dt"], inp["A"], inp["B"], inp["C"], inp["D"], inp["z"], inp["dt_bias"],
                          inp["initial_states"], inp["seq_idx"], dt_softplus=True)
    y_ref, fin_ref = naive_fwd(inp, True)
    return max(np.nanmax(np.abs(y - y_ref)) if np.isfinite(y).all() else np.inf,
               np.nanmax(np.abs(fin - fin_ref)) if np.isfinite(fin).all() else np.inf)


def test_removed_scan_barrier_is_caught(tmp_path):
    # the barrier closing each step of the threadgroup prefix scan in ssd_dt_cumsum
    shim = _mutant(tmp_path, "ssd_fwd.metal",
                   "        cur = 1 - cur;\n        threadgroup_barrier(mem_flags::mem_threadgroup);",
                   "        cur = 1 - cur;")
    assert _fwd_error(shim) > 1e-2


def test_removed_tile_barrier_is_caught(tmp_path):
    # the barrier between loading the x/B tiles and using them in ssd_chunk_state
    old = ("        ys[s][nn] = (l < p.seqlen && n0 + nn < N) ? w * float(Y[((b * p.seqlen + l) * G + g) * N + n0 + "
           "nn]) : 0.0f;\n    }\n    threadgroup_barrier(mem_flags::mem_threadgroup);")
    shim = _mutant(tmp_path, "ssd_fwd.metal", old, old.replace("threadgroup_barrier(mem_flags::mem_threadgroup);", ""))
    assert _fwd_error(shim) > 1e-2


def test_off_by_one_causal_mask_is_caught(tmp_path):
    shim = _mutant(tmp_path, "ssd_fwd.metal", "for (int s = 0; s <= t; ++s) {  // intra-chunk (diagonal block)",
                   "for (int s = 0; s < t; ++s) {  // intra-chunk (diagonal block)")
    assert _fwd_error(shim) > 1e-2


def test_wrong_simdgroup_transpose_is_caught(tmp_path):
    # ssd_bmm_chunk's column tile loaded untransposed: C.B instead of C.B^T
    shim = _mutant(tmp_path, "ssd_fwd.metal", "SSD_BMM_LD, ulong2(0, 0), true);", "SSD_BMM_LD, ulong2(0, 0), false);")
    assert _fwd_error(shim) > 1e-2


def test_early_return_before_barrier_is_caught(tmp_path):
    # threads past the end of the sequence leave before the tile barriers: divergent control flow
    shim = _mutant(tmp_path, "ssd_fwd.metal", "    const float cst = css[t];\n",
                   "    if (l >= p.seqlen) return;\n    const float cst = css[t];\n")
    with pytest.raises(ShimError, match="divergent|deadlock"):
        _fwd_error(shim)


def test_simd_sum_in_divergent_loop_is_caught(tmp_path):
    # simd_sum moved into the lane-strided loop over N: with N = 40 lanes 0-7 call it twice, the rest once
    shim = _mutant(tmp_path, "state_update.metal", "            acc += sn * cv[n];",
                   "            acc += simd_sum(sn * cv[n]);")
    rng = np.random.default_rng(0)
    r = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    state = r(2, 2, 4, 40)
    with pytest.raises(ShimError, match="divergent|deadlock"):
        shim.state_update(state, r(2, 2, 4), r(2, 2, 4), -np.ones((2, 4, 40), np.float32), r(2, 1, 40), r(2, 1, 40),
                          None, None, None, True, None)


def test_off_by_one_in_backward_is_caught(tmp_path):
    # ssd_bwd_du's transposed causal loop starting one step late
    shim = _mutant(tmp_path, "ssd_bwd.metal", "for (int t = s; t < SSD_Q; ++t) {  // intra-chunk, transposed",
                   "for (int t = s + 1; t < SSD_Q; ++t) {  // intra-chunk, transposed")
    inp = make_inputs(1, 1, 20, 2, 4, 1, 8)
    rng = np.random.default_rng(2)
    dy = rng.standard_normal(inp["x"].shape).astype(np.float32)
    grads = shim.ssd_bwd(dy, None, inp["x"], inp["dt"], inp["A"], inp["B"], inp["C"], inp["D"], inp["z"],
                         inp["dt_bias"], inp["initial_states"], inp["seq_idx"], dt_softplus=True)
    refs = naive_grads(inp, dy, None, True)
    assert np.abs(grads[0] - refs[0]).max() > 1e-2  # dx
