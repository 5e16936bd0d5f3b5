#!/bin/bash
# Diagnostics: fused vs unfused CUDA decode, and a per-kernel profile of decode steps.
set -x
mkdir -p /tmp/m
[ -f /tmp/m/model.gguf ] || cat /tmp/m/part_00 /tmp/m/part_01 .dev/p2/part_02 > /tmp/m/model.gguf
ls -la /tmp/m
B=/tmp/m/longctx
export CUBECL_AUTOTUNE_LEVEL=minimal
G="--model-param path=/tmp/m/model.gguf"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
LONGCTX_CUDA_FUSION=${FIRST:-1} timeout ${T1:-220} $B bench-perf --backend cuda $G --lengths ${LENGTHS:-512,8000} --decode-tokens 64 --repeats 1 --peers none --out $OUT/first 2>&1 | tail -20
LONGCTX_CUDA_FUSION=${SECOND:-0} timeout ${T2:-220} $B bench-perf --backend cuda $G --lengths ${LENGTHS:-512,8000} --decode-tokens 64 --repeats 1 --peers none --out $OUT/second 2>&1 | tail -20
if [ -n "$PROFILE" ]; then
  LONGCTX_CUDA_FUSION=$PROFILE CUBECL_DEBUG_LOG=/tmp/prof.log CUBECL_DEBUG_OPTION=profile timeout 120 $B bench-perf --backend cuda $G --lengths 512 --decode-tokens 4 --repeats 1 --peers none --out /tmp/prof 2>&1 | tail -5
  wc -l /tmp/prof.log; tail -3000 /tmp/prof.log | xz > $OUT/prof-tail.log.xz
fi
