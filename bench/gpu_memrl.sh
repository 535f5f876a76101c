#!/usr/bin/env bash
# memrl on one CUDA GPU, in one go: CUDA tests (graph replay == eager, Mamba2 actor-critic CUDA == CPU, Triton
# decode step), the throughput table (bench/memrl_speed.py), then DelayedCue-200 and -1000 solved from scratch
# with 4096 envs (wall time includes kernel compilation and graph capture). Logs and results go to $OUT.
#
#   OUT=bench_out bash bench/gpu_memrl.sh [HORIZON:LIMIT_S:MINIBATCHES ...]   (default: 200:120:8 1000:200:8)
#   SKIP_SPEED=1 skips the tests and the throughput table (solves only).
set -u
OUT=${OUT:-bench_out}
mkdir -p "$OUT"
export PYTHONPATH=${PYTHONPATH:-.}:.
export PYTHONUNBUFFERED=1
SOLVES=${*:-200:120:8 1000:200:8}
RUNS=${RUNS:-/tmp/memrl_runs}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"

if [ -z "${SKIP_SPEED:-}" ]; then
echo "== CUDA tests"
timeout 240 python3 -m pytest -q -x -p no:cacheprovider tests/memrl/test_rollout.py "tests/test_triton.py::test_decode_step_vs_reference" \
  tests/test_triton.py::test_decode_matches_reference_large_batch 2>&1 | tail -15

echo "== throughput"
timeout 150 python3 bench/memrl_speed.py --device cuda --envs 512,4096 --controllers mamba2,gru --repeats 3 2>&1 | tail -12

fi

for spec in $SOLVES; do
  IFS=: read -r H limit mb <<<"$spec"
  echo "== solve DelayedCue-$H, 4096 envs, $mb minibatches, limit ${limit}s"
  rm -rf "$RUNS/h$H"
  start=$(date +%s.%N)
  timeout -s INT "$limit" python3 -m memrl train --device cuda --num-envs 4096 --horizon "$H" --out "$RUNS/h$H" \
    --num-minibatches "$mb" --no-progress ${EXTRA_ARGS:-} 2>&1 | tail -4
  echo "  command wall: $(python3 -c "import time; print(round(time.time() - $start, 1))") s"
  python3 bench/run_summary.py "$RUNS/h$H" --last 25
  cp "$RUNS/h$H/metrics.jsonl" "$OUT/delayedcue$H.jsonl" 2>/dev/null
done
