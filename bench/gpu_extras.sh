#!/usr/bin/env bash
# One GPU call for the POPGym ports' GPU column and the transformers hook on CUDA:
#   1. bench/gpu_popgym.py: each ported Easy env from scratch at 4096 envs (POPGYM_LIMIT_S each, default 70)
#   2. tests/test_transformers_patch.py on the GPU (MAMBA_COMPAT_TEST_DEVICE=cuda), then bench/transformers_speed.py
#      --device cuda (patched vs HF's torch path), if transformers is installed there.
#   OUT=bench_out bash bench/gpu_extras.sh        SKIP_POPGYM=1 / SKIP_HF=1 skip a part
set -u
OUT=${OUT:-bench_out}
mkdir -p "$OUT"
export PYTHONPATH=${PYTHONPATH:-.}:.
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
if [ -z "${SKIP_HF:-}" ]; then
  if python3 -c "import transformers; print('transformers', transformers.__version__)"; then
    echo "== transformers patch tests on CUDA"
    MAMBA_COMPAT_TEST_DEVICE=cuda timeout 200 python3 -m pytest -q -x -p no:cacheprovider tests/test_transformers_patch.py 2>&1 | tail -8
    echo "== transformers speed on CUDA"
    timeout 150 python3 bench/transformers_speed.py --device cuda 2>&1 | tail -8
  else
    echo "transformers is not installed here: its part skipped"
  fi
fi
if [ -z "${SKIP_POPGYM:-}" ]; then
  echo "== POPGym ports, 4096 envs"
  timeout 560 python3 bench/gpu_popgym.py --limit-s "${POPGYM_LIMIT_S:-70}" --target-return 0.99 2>&1 | tail -12
  cp gpu_popgym.json "$OUT/" 2>/dev/null
fi
