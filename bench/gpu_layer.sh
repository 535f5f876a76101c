#!/usr/bin/env bash
# One call on the GPU machine for the Mamba2 layer work, stages in the order given (files land in $OUT):
#   bash bench/gpu_layer.sh [tests] [split] [grid] [bench]      (default: tests bench grid)
# tests: compiled tests with their errors recorded (TESTS, TEST_TIMEOUT; TEST_AUTOTUNE=0: one config, faster builds)
# split: the chunk-parallel group-size sweep (gpu_fwd_split.py, SPLIT_ARGS)
# grid:  the op vs upstream on the grid (gpu_grid.py, GRID_BUDGET seconds)
# bench: conv/norm (CONV_TIMEOUT=0 skips) and the whole layer vs upstream; waits for causal-conv1d, which
#        gpu_setup_anchor.sh builds in the background meanwhile (upstream's fastest path needs it).
# Wheels in .wheels/ (gymnasium for the memrl tests: the GPU image has none) are installed first. Leave ~60 s of
# the call for the packing at the end (NO_PACK=1 skips it).
set -o pipefail
stages="${*:-tests bench grid}"
OUT="${OUT:-.}"
source bench/gpu_setup_anchor.sh bg
ls .wheels/*.whl >/dev/null 2>&1 && python3 -m pip install -q --no-deps --no-index .wheels/*.whl
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv,noheader
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
wait_cc() { [ -n "$CC_BUILD_PID" ] && { wait "$CC_BUILD_PID"; tail -2 /tmp/cc_build.log; CC_BUILD_PID=; }; }
for stage in $stages; do
  case $stage in
  tests)
    TESTS="${TESTS:-tests/test_triton.py tests/test_conv1d.py tests/test_rmsnorm.py tests/test_contract_dtypes.py \
      tests/test_mamba2.py tests/test_state_update.py tests/memrl/test_distributed.py tests/memrl/test_rollout.py}"
    MAMBA_COMPAT_TRITON_AUTOTUNE=${TEST_AUTOTUNE:-1} MAMBA_COMPAT_RECORD_ERRORS=$OUT/errors.jsonl \
      timeout "${TEST_TIMEOUT:-330}" python3 -m pytest -q -rfE --tb=short -p no:cacheprovider $TESTS > "$OUT/tests.log" 2>&1
    grep -E "passed|failed|FAILED|ERROR" "$OUT/tests.log" | tail -20
    python3 bench/tolerances.py "$OUT/errors.jsonl" > "$OUT/tolerances.txt" && head -25 "$OUT/tolerances.txt" ;;
  split)
    timeout "${SPLIT_TIMEOUT:-200}" python3 bench/gpu_fwd_split.py ${SPLIT_ARGS:-} 2>&1 | tee "$OUT/split.txt" ;;
  grid)
    timeout "${GRID_TIMEOUT:-300}" python3 bench/gpu_grid.py --budget "${GRID_BUDGET:-240}" ${GRID_ARGS:-} 2>&1 | tee "$OUT/grid.txt" ;;
  bench)
    wait_cc
    [ "${CONV_TIMEOUT:-120}" != 0 ] && timeout "${CONV_TIMEOUT:-120}" python3 bench/gpu_conv_norm.py 2>&1 | tee "$OUT/conv_norm.txt" | tail -20
    timeout "${LAYER_TIMEOUT:-300}" python3 bench/gpu_layer.py ${LAYER_ARGS:-} 2>&1 | tee "$OUT/layer.txt" ;;
  esac
done
wait_cc
# what comes back is at most 8 files: the logs in one archive, then the caches in 15 MB parts (see
# gpu_setup_anchor.sh), each only if it fits in 2 parts (carried back they must fit the 64 MiB the tree may carry)
(cd "$OUT" && ls ./* >/dev/null 2>&1 && tar czf logs.tar.gz --remove-files ./*.txt ./*.json ./*.jsonl ./*.log 2>/dev/null)
pack() {  # pack DIR NAME MAXPARTS
  [ -d "$1" ] || return 0
  tar cf - -C "$1" . | xz -T0 -6 | split -b 15M -d - "/tmp/$2.tar.xz.part"
  if [ "$(ls /tmp/"$2".tar.xz.part* | wc -l)" -le "$3" ]; then mv /tmp/"$2".tar.xz.part* "$OUT/"; else
    echo "$2: over $3 parts, not returned"; rm -f /tmp/"$2".tar.xz.part*; fi
}
[ -n "${NO_PACK:-}" ] || { pack .anchor/triton_cache triton_cache 2; pack .anchor/site cc_site 2; ls -la "$OUT"; }
