#!/bin/bash
# Where a CUDA decode step's time goes: cubecl's per-launch profile (each launch synchronised
# and timed) of a 512-token prefill and DT decode steps, with the one-token row kernels on
# (LONGCTX_CUDA_ROW_KERNELS=1) and off, each summed per kernel by profile-summary.py; then the
# same runs unprofiled for the steps' wall time. Staging as in README.md (GGUF parts in
# /tmp/m, the binary at /tmp/m/longctx, this folder copied to .dev/p2).
mkdir -p /tmp/m
[ -f /tmp/m/SmolLM2-135M-Instruct.Q4_1.gguf ] || cat /tmp/m/part_00 /tmp/m/part_01 .dev/p2/part_02 > /tmp/m/SmolLM2-135M-Instruct.Q4_1.gguf
export CUBECL_AUTOTUNE_LEVEL=minimal
G="--model-param path=/tmp/m/SmolLM2-135M-Instruct.Q4_1.gguf"
for rows in 1 0; do
  echo "== LONGCTX_CUDA_ROW_KERNELS=$rows"
  LONGCTX_CUDA_ROW_KERNELS=$rows CUBECL_DEBUG_LOG=/tmp/prof-$rows.log CUBECL_DEBUG_OPTION=profile \
    timeout ${TP:-200} /tmp/m/longctx bench-perf --backend cuda $G --lengths 512 --decode-tokens ${DT:-16} \
    --repeats 1 --peers none --out /tmp/prof-out-$rows 2>&1 | tail -2
  python3 .dev/p2/profile-summary.py /tmp/prof-$rows.log 3 ${TOP:-14}
  xz -T8 -c /tmp/prof-$rows.log > $OUT/prof-$rows.log.xz
  LONGCTX_CUDA_ROW_KERNELS=$rows timeout ${TB:-100} /tmp/m/longctx bench-perf --backend cuda $G --lengths ${LB:-8000} \
    --decode-tokens 64 --repeats 1 --prefill-chunk 2048 --peers none --out $OUT/bench-$rows 2>&1 | tail -2
done
