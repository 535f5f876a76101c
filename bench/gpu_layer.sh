#!/usr/bin/env bash
# One call on the GPU machine for the Mamba2 layer work: compiled tests with their errors recorded, then the
# conv/norm and whole-layer benchmarks and the op grid against upstream (causal-conv1d built meanwhile, see
# gpu_setup_anchor.sh). Wheels in .wheels/ (gymnasium for the memrl tests: the GPU image has none) are installed.
#   bash bench/gpu_layer.sh [tests] [bench] [split] [grid]   (all but split by default; files land in $OUT)
# split: the chunk-parallel group-size sweep (gpu_fwd_split.py).
set -o pipefail
stages="${*:-tests bench grid}"
OUT="${OUT:-.}"
source bench/gpu_setup_anchor.sh bg
ls .wheels/*.whl >/dev/null 2>&1 && python3 -m pip install -q --no-deps --no-index .wheels/*.whl
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv,noheader
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
if [[ $stages == *tests* ]]; then
  TESTS="${TESTS:-tests/test_triton.py tests/test_conv1d.py tests/test_rmsnorm.py tests/test_contract_dtypes.py \
    tests/test_mamba2.py tests/test_state_update.py tests/memrl/test_distributed.py tests/memrl/test_rollout.py}"
  MAMBA_COMPAT_TRITON_AUTOTUNE=${TEST_AUTOTUNE:-1} MAMBA_COMPAT_RECORD_ERRORS=$OUT/errors.jsonl timeout "${TEST_TIMEOUT:-330}" python3 -m pytest -q -rfE --tb=short \
    -p no:cacheprovider $TESTS > "$OUT/tests.log" 2>&1
  grep -E "passed|failed|FAILED|ERROR" "$OUT/tests.log" | tail -20
  python3 bench/tolerances.py "$OUT/errors.jsonl" > "$OUT/tolerances.txt" && head -25 "$OUT/tolerances.txt"
fi
wait_cc() { [ -n "$CC_BUILD_PID" ] && { wait "$CC_BUILD_PID"; tail -2 /tmp/cc_build.log; CC_BUILD_PID=; }; }
if [[ $stages == *bench* ]]; then
  wait_cc  # upstream's fastest path needs causal-conv1d
  [ "${CONV_TIMEOUT:-120}" != 0 ] && timeout "${CONV_TIMEOUT:-120}" python3 bench/gpu_conv_norm.py 2>&1 | tee "$OUT/conv_norm.txt" | tail -20
  timeout "${LAYER_TIMEOUT:-300}" python3 bench/gpu_layer.py ${LAYER_ARGS:-} 2>&1 | tee "$OUT/layer.txt" | tail -25
fi
if [[ $stages == *split* ]]; then
  timeout "${SPLIT_TIMEOUT:-200}" python3 bench/gpu_fwd_split.py ${SPLIT_ARGS:-} 2>&1 | tee "$OUT/split.txt"
fi
if [[ $stages == *grid* ]]; then
  timeout "${GRID_TIMEOUT:-300}" python3 bench/gpu_grid.py --budget "${GRID_BUDGET:-240}" ${GRID_ARGS:-} 2>&1 | tee "$OUT/grid.txt"
fi
wait_cc
