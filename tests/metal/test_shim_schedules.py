"""Schedules and input types of the shim itself: the kernels give bit-identical results under every
schedule the runtime can produce (groups shuffled per launch, one or two groups in flight interleaved at
barriers, threads forward / reverse / random), the runtime reports a pointer write past a threadgroup
array, and the bfloat build (SSD_IN_T=bfloat, as the glue compiles it for bfloat16) matches the float
library bit for bit after one round-to-nearest-even of y, and the float64 oracle within bf16 rounding."""
from __future__ import annotations

import ctypes

import numpy as np
import pytest

from oracle import assert_close, make_inputs, naive_fwd, naive_grads
from shim_build import Shim, ShimError, from_bf16, to_bf16
from test_shim_blind_spots import SHAPE, mutant_dir

SCHEDULES = [  # (order, seed, resident)
    ("forward", 0, 1),   # the old shim's only schedule
    ("reverse", 11, 1),
    ("random", 12, 2),
    ("forward", 13, 3),
    ("random", 14, 1),
]


def _fwd_bwd(s, inp, dy, dfinal):
    args = (inp["x"], inp["dt"], inp["A"], inp["B"], inp["C"], inp["D"], inp["z"], inp["dt_bias"],
            inp["initial_states"], inp["seq_idx"])
    y, fin = s.ssd_fwd(*args, dt_softplus=True)
    grads = s.ssd_bwd(dy, dfinal, *args, dt_softplus=True)
    return [y, fin, *[g for g in grads if g is not None]]


def test_results_bit_identical_under_every_schedule(shim_lib):
    """No atomics, no cross-group reads: any schedule must give the same bits, forward and backward."""
    inp = make_inputs(21, 1, 37, 4, 8, 2, 16)  # 3 chunks, 2 groups of heads
    rng = np.random.default_rng(22)
    dy = rng.standard_normal(inp["x"].shape).astype(np.float32)
    dfinal = rng.standard_normal(inp["initial_states"].shape).astype(np.float32)
    runs = [_fwd_bwd(Shim(shim_lib, order=o, seed=sd, resident=r), inp, dy, dfinal) for o, sd, r in SCHEDULES]
    for (o, sd, r), outs in zip(SCHEDULES[1:], runs[1:]):
        for i, (a, b) in enumerate(zip(runs[0], outs)):
            assert np.array_equal(a, b), f"output {i} differs under order={o} seed={sd} resident={r}"
    assert_close("y", runs[0][0], naive_fwd(inp, True)[0])
    assert_close("dx", runs[0][2], naive_grads(inp, dy, dfinal, True)[0], rtol=5e-5)


def test_decode_step_bit_identical_under_every_schedule(shim_lib):
    rng = np.random.default_rng(23)
    r = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    args = (r(3, 4, 6), r(3, 4, 6), -np.exp(r(4, 6, 40)), r(3, 2, 40), r(3, 2, 40), r(4, 6), r(3, 4, 6), r(4, 6),
            True, np.array([2, -1, 0], np.int32))
    state0 = r(3, 4, 6, 40)
    outs = []
    for o, sd, res in SCHEDULES:
        st = state0.copy()
        outs.append((Shim(shim_lib, order=o, seed=sd, resident=res).state_update(st, *args), st))
    for out, st in outs[1:]:
        assert np.array_equal(out, outs[0][0]) and np.array_equal(st, outs[0][1])


def test_pointer_write_past_a_tile_is_reported(tmp_path):
    """A write through a pointer into a threadgroup array escapes the index checks; the canaries after
    every array catch it when the group ends. Mutation: ssd_bmm_chunk's column tile written through a
    pointer with a row stride one too large (the last row ends 15 floats past the tile). (The old shim
    also got wrong values here, from the wrong layout; it could not say where.)"""
    import test_shim_blind_spots as t

    t.MUTATIONS["tile_pointer_stride"] = (
        "ssd_fwd.metal", "            ct[r][i] = ok ? float(col[g]) : 0.0f;",
        "            (&ct[0][0])[r * (SSD_BMM_LD + 1) + i] = ok ? float(col[g]) : 0.0f;", t.fwd_probe, "canary")
    try:
        src = mutant_dir(tmp_path, "tile_pointer_stride")
    finally:
        del t.MUTATIONS["tile_pointer_stride"]
    from shim_build import SCHEDULE
    from shim_build import build

    with pytest.raises(ShimError, match=r"threadgroup array 'ct' of group \(\d+, \d+, \d+\): written past its end"):
        t.fwd_probe(Shim(build(16, src_dir=src), **SCHEDULE))


# ---- bfloat --------------------------------------------------------------------------------------------

def test_shim_bfloat_rounds_to_nearest_even(shim_bfloat):
    """The shim's float -> bfloat against torch's (round to nearest, ties to even; NaN stays NaN)."""
    bits = lambda *u: np.array(u, np.uint32).view(np.float32)  # noqa: E731
    edge = np.concatenate([
        bits(0x3F808000, 0x3F818000, 0x3F808001, 0x3F807FFF, 0x7F7FFFFF, 0x7F7F8000, 0x00008000, 0x80018000),
        np.array([0.0, -0.0, 1.0, -1.5, np.inf, -np.inf, 3.0e38, 1e-40, 65504.0, 1 / 3], np.float32),
        np.random.default_rng(24).standard_normal(4096).astype(np.float32) * 10.0 ** np.arange(-4, 4).repeat(512),
    ]).astype(np.float32)
    out = np.zeros(edge.shape, np.uint16)
    shim_bfloat.lib.shim_to_bfloat(ctypes.c_void_p(edge.ctypes.data), ctypes.c_void_p(out.ctypes.data), edge.size)
    assert np.array_equal(out, to_bf16(edge))
    assert out[0] == 0x3F80 and out[1] == 0x3F82 and out[2] == 0x3F81  # ties to even, above the tie up
    nan = np.zeros(1, np.uint16)
    shim_bfloat.lib.shim_to_bfloat(ctypes.c_void_p(np.array([np.nan], np.float32).ctypes.data),
                                   ctypes.c_void_p(nan.ctypes.data), 1)
    assert np.isnan(from_bf16(nan)).all()


# Error of the bfloat forward's y (one rounding to bf16) against the float64 oracle on the rounded inputs,
# as max abs err / max(1, max |y|): measured 1.1e-3 .. 3.0e-3 (seeds 25-27, three shapes); final states
# (fp32) <= 1.5e-7. bf16 keeps 8 significant bits, so one rounding is at most 2^-8 = 3.9e-3 of |y|: the
# bound is that plus the fp32 error (~1e-6).
TOL_BF16_Y = 4e-3


@pytest.mark.parametrize("seed,shape", [(25, SHAPE), (26, (1, 50, 3, 5, 3, 33))], ids=["groups", "ragged"])
def test_bfloat_library_forward(shim_bfloat, shim, seed, shape):
    """SSD_IN_T=bfloat: x/B/C/z read as bfloat, fp32 arithmetic, y written as bfloat. Bit-identical to the
    float library on the same (rounded) inputs after one round-to-nearest-even of y; final states (fp32)
    identical; y within bf16 rounding of the float64 oracle."""
    assert shim_bfloat.in_kind == "bfloat" and shim_bfloat.in_np == np.uint16
    inp = make_inputs(seed, *shape)
    for k in ("x", "B", "C", "z"):  # both libraries and the oracle see the same rounded inputs
        inp[k] = from_bf16(to_bf16(inp[k]))
    args = (inp["x"], inp["dt"], inp["A"], inp["B"], inp["C"], inp["D"], inp["z"], inp["dt_bias"],
            inp["initial_states"], inp["seq_idx"])
    y_bits, fin = shim_bfloat.ssd_fwd(*args, dt_softplus=True)
    assert y_bits.dtype == np.uint16
    y32, fin32 = shim.ssd_fwd(*args, dt_softplus=True)
    assert np.array_equal(y_bits, to_bf16(y32))
    assert np.array_equal(fin, fin32)
    y_ref, fin_ref = naive_fwd(inp, True)
    assert_close("y", from_bf16(y_bits), y_ref, rtol=TOL_BF16_Y)
    assert_close("final_states", fin, fin_ref)
