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


def _mutant(tmp_path, filename, old, new, count=1, more=()):
    """A copy of csrc/metal with `old` replaced by `new` in `filename` (and each (old, new) of `more`)."""
    src = tmp_path / "metal"
    shutil.copytree(METAL_DIR, src)
    text = (src / filename).read_text()
    for o, n in ((old, new), *more):
        assert text.count(o) >= count, f"mutation site {o!r} not found in {filename}"
        text = text.replace(o, n, count)
    (src / filename).write_text(text)
    return Shim(build(16, src_dir=src), seed=1, resident=2)


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
    shim = _mutant(tmp_path, "ssd_fwd.metal", "    const float2 cst = css[t];\n",
                   "    if (l >= p.seqlen) return;\n    const float2 cst = css[t];\n")
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


def _large_dt_errors(shim):
    """Max errors (y, dA) of the large-|dt*A| case of test_metal_shim.py (Q16, seed 1)."""
    from test_metal_shim import _large_dt_inputs, _run_bwd, _run_fwd

    inp = _large_dt_inputs(1, (1, 40, 2, 16, 1, 16))
    rng = np.random.default_rng(101)
    dy = rng.standard_normal(inp["x"].shape).astype(np.float32)
    dfinal = rng.standard_normal(inp["initial_states"].shape).astype(np.float32)
    y, _ = _run_fwd(shim, inp, dt_softplus=True)
    dA = _run_bwd(shim, dy, dfinal, inp, dt_softplus=True)[2]
    dA_ref = naive_grads(inp, dy, dfinal, True)[2]
    y_ref = naive_fwd(inp, True)[0]
    rel = lambda a, r: float(np.abs(a - r).max()) / max(1.0, float(np.abs(r).max()))  # noqa: E731
    return rel(y, y_ref), rel(dA, dA_ref)


def test_fp32_segment_sums_are_caught(tmp_path):
    # the low word of the double-float cumsum dropped: segment sums as differences of fp32 cumsums
    shim = _mutant(tmp_path, "ssd_fwd.metal", "return (a.x - b.x) + (a.y - b.y);", "return a.x - b.x;")
    y_err, dA_err = _large_dt_errors(shim)
    assert y_err > 3e-6 and dA_err > 2e-5  # fails the real test's bounds; measured 1.1e-5 and 3.8e-5


def test_decay_gradient_as_difference_is_caught(tmp_path):
    # the intra-chunk part of da_t as the reverse cumsum of rowsum(M) - colsum(M) (the old form) instead
    # of the direct sum over the pairs spanning t
    row_col = ("    float pair = 0.0f, row = 0.0f, col = 0.0f;\n"
               "    for (int s = 0; s < t; ++s)\n"
               "        if (rcs[s] == rct) row += exp(ssd_seg(cst, css[s])) * dts[s] * dm[t * SSD_Q + s] * cbm[t * SSD_Q + s];\n"
               "    for (int t2 = t + 1; t2 < SSD_Q; ++t2)\n"
               "        if (rcs[t2] == rct) col += exp(ssd_seg(css[t2], cst)) * dts[t] * dm[t2 * SSD_Q + t] * cbm[t2 * SSD_Q + t];\n"
               "    for (int t2 = SSD_Q; t2 < SSD_Q; ++t2) {")
    shim = _mutant(tmp_path, "ssd_bwd.metal", "    float pair = 0.0f;\n    for (int t2 = t; t2 < SSD_Q; ++t2) {", row_col,
                   more=[("    dcs[t] = yoff;", "    dcs[t] = yoff + row - col;")])
    y_err, dA_err = _large_dt_errors(shim)
    assert y_err < 3e-6 and dA_err > 2e-5  # only the gradient is off: measured 4.3e-7 and 1.4e-4
