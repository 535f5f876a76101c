#!/usr/bin/env bash
# memrl on one CUDA GPU, in one go: CUDA tests (graph replay == eager for acting and for the PPO update, Mamba2
# actor-critic CUDA == CPU), the throughput table (bench/memrl_speed.py: graphed update vs eager update, with a
# torch.profiler summary), then DelayedCue solved from scratch with 4096 envs (wall time includes kernel
# compilation and graph capture). Logs and results go to $OUT.
#
#   OUT=bench_out bash bench/gpu_memrl.sh [HORIZON:LIMIT_S:MINIBATCHES[:FLAG] ...]   (default: 200:120:8 1000:200:8)
#   FLAG: an extra memrl train flag without its dashes (no-update-graph: the eager update, for before/after)
#   SKIP_TESTS=1 skips the tests; SKIP_SPEED=1 the throughput table; SPEED_ENVS (512,4096,16384), SPEED_MODES.
set -u
OUT=${OUT:-bench_out}
mkdir -p "$OUT"
export PYTHONPATH=${PYTHONPATH:-.}:.
export PYTHONUNBUFFERED=1
SOLVES=${*:-200:120:8 1000:200:8}
RUNS=${RUNS:-/tmp/memrl_runs}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"

if [ -z "${SKIP_TESTS:-}" ]; then
echo "== CUDA tests"
timeout 240 python3 -m pytest -q -x -p no:cacheprovider ${TESTS:-tests/memrl/test_update.py tests/memrl/test_rollout.py} 2>&1 | tail -15
fi

if [ -z "${SKIP_SPEED:-}" ]; then
echo "== throughput"
timeout 300 python3 bench/memrl_speed.py --device cuda --envs "${SPEED_ENVS:-512,4096,16384}" --controllers mamba2 \
  --modes "${SPEED_MODES:-graph,eager-update}" --repeats 3 --profile 2>&1 | grep -v "^write\|Warning" | tail -30
cp memrl_speed.json "$OUT/" 2>/dev/null
fi

for spec in $SOLVES; do
  IFS=: read -r H limit mb flag <<<"$spec"
  extra=${flag:+--$flag}
  echo "== solve DelayedCue-$H, 4096 envs, $mb minibatches, limit ${limit}s ${extra}"
  rm -rf "$RUNS/h$H$flag"
  start=$(date +%s.%N)
  timeout -s INT "$limit" python3 -m memrl train --device cuda --num-envs 4096 --horizon "$H" --out "$RUNS/h$H$flag" \
    --num-minibatches "$mb" --no-progress $extra ${EXTRA_ARGS:-} 2>&1 | tail -3
  echo "  command wall: $(python3 -c "import time; print(round(time.time() - $start, 1))") s"
  python3 bench/run_summary.py "$RUNS/h$H$flag" --last 3
  cp "$RUNS/h$H$flag/metrics.jsonl" "$OUT/delayedcue$H$flag.jsonl" 2>/dev/null
done
