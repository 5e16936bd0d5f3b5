#!/bin/bash
# One bench-perf run on the CUDA backend: FUSION=0|1, PEERS=none|transformers.
set -x
mkdir -p /tmp/m
[ -f /tmp/m/model.gguf ] || cat /tmp/m/part_00 /tmp/m/part_01 .dev/p2/part_02 > /tmp/m/model.gguf
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .dev/p2/gguf-*.whl && export PYTHONPATH=/tmp/site
export CUBECL_AUTOTUNE_LEVEL=minimal
cp /tmp/m/model.gguf /tmp/m/SmolLM2-135M-Instruct.Q4_1.gguf 2>/dev/null || true
LONGCTX_CUDA_FUSION=$FUSION timeout ${T:-540} /tmp/m/longctx bench-perf --backend cuda --model-param path=/tmp/m/SmolLM2-135M-Instruct.Q4_1.gguf --lengths ${LENGTHS:-512,2048,8000} --decode-tokens 64 --repeats 1 --peers $PEERS --out $OUT/run 2>&1 | grep -v "^\s*$" | tail -40
