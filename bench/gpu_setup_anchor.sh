#!/usr/bin/env bash
# On the GPU machine: build causal-conv1d from .anchor/ (laid out by ../shared/tools/mamba_ssm_anchor.sh) into
# .anchor/site unless a build is there, and point the upstream-parity tests at .anchor. Source it:
#   source bench/gpu_setup_anchor.sh [bg]   -> PYTHONPATH=.:.anchor:.anchor/site, MAMBA_COMPAT_CACHE set
# Its setup.py builds for nine GPU archs (over 10 minutes on the H200 machine's 16 cores, measured 2026-12-02);
# a scratch copy of it is built for sm_90 only. With "bg" the build runs in the background (wait $CC_BUILD_PID).
set -u
build_cc() {
  rm -rf /tmp/cc && cp -r .anchor/causal_conv1d-1.7.0 /tmp/cc
  python3 - <<'PY'
import re
p = "/tmp/cc/setup.py"
s = open(p).read()
s = re.sub(r'\n( *)cc_flag\.append\("-gencode"\)\s*cc_flag\.append\("arch=compute_(?!90,)\d+,code=sm_\d+"\)',
           lambda m: "\n" + m.group(1) + "pass", s)
open(p, "w").write(s)
PY
  (cd /tmp/cc && CAUSAL_CONV1D_FORCE_BUILD=TRUE TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=${CC_JOBS:-10} python3 -m pip install -q --no-build-isolation --no-deps \
     --target "$OLDPWD/.anchor/site" . ) > /tmp/cc_build.log 2>&1 || echo "causal-conv1d build failed: /tmp/cc_build.log"
}
CC_BUILD_PID=
# What an earlier call returned (gpu_layer.sh packs them into $OUT as 15 MB parts; copy the parts into .anchor/
# and carry it): the causal-conv1d build (cc_site.tar.xz.part*) and the Triton kernel + autotune cache
# (triton_cache.tar.xz.part*). Kernel builds and autotuning took most of a fresh machine's device time.
if [ ! -d .anchor/site/causal_conv1d ] && ls .anchor/cc_site.tar.xz.part* >/dev/null 2>&1; then
  mkdir -p .anchor/site && cat .anchor/cc_site.tar.xz.part* | tar xJf - -C .anchor/site
fi
if [ ! -d .anchor/triton_cache ] && ls .anchor/triton_cache.tar.xz.part* >/dev/null 2>&1; then
  mkdir -p .anchor/triton_cache && cat .anchor/triton_cache.tar.xz.part* | tar xJf - -C .anchor/triton_cache
fi
export TRITON_CACHE_DIR="$PWD/.anchor/triton_cache" TRITON_CACHE_AUTOTUNING=1
if [ ! -d .anchor/site/causal_conv1d ]; then
  if [ "${1:-}" = bg ]; then build_cc & CC_BUILD_PID=$!; else build_cc; fi
fi
mkdir -p /tmp/mcache && ln -sfn "$PWD/.anchor" /tmp/mcache/mamba_ssm-2.3.2.post1
export MAMBA_COMPAT_CACHE=/tmp/mcache PYTHONPATH=.:.anchor:.anchor/site PYTHONUNBUFFERED=1
