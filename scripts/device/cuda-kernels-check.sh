#!/bin/bash
# Custom CUDA kernels (RMSNorm, split-key decode attention) on the unfused backend:
# (a) the greedy 32-token continuation of a ~920-token prompt with the kernels, compared with
#     `$REF` when given (the same `generate` command's output on the CPU, made before the call);
# (b) `bench-perf` with the kernels, prefill in 2,048-token chunks, beside the `$PA` peers;
# (c) the same without the kernels at `$LC` tokens (A/B on the same card), unless `SKIPC=1`.
mkdir -p /tmp/m
[ -f /tmp/m/SmolLM2-135M-Instruct.Q4_1.gguf ] || cat /tmp/m/part_00 /tmp/m/part_01 .dev/p2/part_02 > /tmp/m/SmolLM2-135M-Instruct.Q4_1.gguf
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .dev/p2/gguf-*.whl && export PYTHONPATH=/tmp/site
export CUBECL_AUTOTUNE_LEVEL=minimal LONGCTX_CUDA_FUSION=0
G="--model-param path=/tmp/m/SmolLM2-135M-Instruct.Q4_1.gguf"
P="$(python3 -c 'print("Rust is a language empowering everyone to build reliable and efficient software. " * 70 + "Summarise the text above in one sentence.")')"
LONGCTX_GPU_KERNELS=1 timeout ${TG:-150} /tmp/m/longctx generate --model smollm2-135m --backend cuda $G --chat false --max-new-tokens 32 --prompt "$P" > $OUT/gen-kernels.txt 2>$OUT/gen-kernels.err
echo "generate rc=$?"; cat $OUT/gen-kernels.txt; echo
[ -z "$REF" ] || { cmp $OUT/gen-kernels.txt "$REF" && echo "GREEDY OUTPUT IDENTICAL TO THE CPU'S"; }
LONGCTX_GPU_KERNELS=1 timeout ${TA:-330} /tmp/m/longctx bench-perf --backend cuda $G --lengths ${LA:-512,2048,8000} --decode-tokens 64 --repeats 1 --prefill-chunk 2048 --peers ${PA:-transformers} --out $OUT/a 2>&1 | grep -v "Converting\|Loading\|^\s*$" | tail -16
[ -n "$SKIPC" ] || LONGCTX_GPU_KERNELS=0 timeout ${TC:-100} /tmp/m/longctx bench-perf --backend cuda $G --lengths ${LC:-8000} --decode-tokens 64 --repeats 1 --prefill-chunk 2048 --peers none --out $OUT/c 2>&1 | tail -4
