#!/usr/bin/env bash
# Data-parallel memrl on the GPUs of one host: throughput on 1 vs N GPUs (bench/ddp_speed.py, 4096 envs per GPU)
# and the time to solve DelayedCue at each horizon on 1 vs N GPUs (`torchrun ... -m memrl train`).
#
#   OUT=bench_out NGPU=2 bash bench/gpu_ddp.sh [HORIZON:LIMIT_S:MINIBATCHES ...]   (default: 1000:150:8)
# NVLink multicast stays off (NCCL_NVLS_ENABLE=0 etc.), as on shared hosts.
set -u
OUT=${OUT:-bench_out}
NGPU=${NGPU:-2}
mkdir -p "$OUT"
export PYTHONPATH=${PYTHONPATH:-.}:. PYTHONUNBUFFERED=1
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
SOLVES=${*:-1000:150:8}
RUNS=${RUNS:-/tmp/memrl_ddp_runs}
nvidia-smi -L
for n in 1 "$NGPU"; do
  echo "== throughput, $n GPU(s)"
  timeout 150 torchrun --nproc-per-node="$n" bench/ddp_speed.py --device cuda --envs 4096 --horizon 200 --steps 5 2>&1 \
    | grep -E "world|Error|error" | tail -5
done
for spec in $SOLVES; do
  IFS=: read -r H limit mb <<<"$spec"
  for n in 1 "$NGPU"; do
    echo "== solve DelayedCue-$H on $n GPU(s), 4096 envs per GPU, $mb minibatches, limit ${limit}s"
    rm -rf "$RUNS/h${H}_g$n"
    start=$(date +%s.%N)
    timeout -s INT "$limit" torchrun --nproc-per-node="$n" -m memrl train --device cuda --num-envs 4096 --horizon "$H" \
      --num-minibatches "$mb" --total-steps 3000000000 --out "$RUNS/h${H}_g$n" --no-progress 2>&1 | grep -E "^done|rror" | tail -4
    echo "  command wall: $(python3 -c "import time; print(round(time.time() - $start, 1))") s"
    python3 bench/run_summary.py "$RUNS/h${H}_g$n" --last 4
    cp "$RUNS/h${H}_g$n/metrics.jsonl" "$OUT/ddp_delayedcue${H}_g$n.jsonl" 2>/dev/null
  done
done
