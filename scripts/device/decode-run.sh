#!/bin/bash
# One-token row kernels on CUDA (LONGCTX_CUDA_ROW_KERNELS=1): (a) the greedy 32-token
# continuation of a ~920-token prompt, compared with the CPU's (.dev/p2/ref.txt, made by the
# same command on --backend cpu), unless SKIPG=1; (b) bench-perf at $LA tokens beside $PA,
# prefill in 2,048 chunks; (c) the same without the row kernels at $LC tokens (A/B), unless
# SKIPC=1. The machine starts cold: each process compiles its kernels (minutes).
mkdir -p /tmp/m
[ -f /tmp/m/SmolLM2-135M-Instruct.Q4_1.gguf ] || cat /tmp/m/part_00 /tmp/m/part_01 .dev/p2/part_02 > /tmp/m/SmolLM2-135M-Instruct.Q4_1.gguf
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .dev/p2/gguf-*.whl && export PYTHONPATH=/tmp/site
export CUBECL_AUTOTUNE_LEVEL=minimal LONGCTX_CUDA_ROW_KERNELS=1
nvidia-smi --query-gpu=name --format=csv,noheader
G="--model-param path=/tmp/m/SmolLM2-135M-Instruct.Q4_1.gguf"
P="$(python3 -c 'print("Rust is a language empowering everyone to build reliable and efficient software. " * 70 + "Summarise the text above in one sentence.")')"
[ -n "$SKIPG" ] || timeout ${TG:-200} /tmp/m/longctx generate --model smollm2-135m --backend cuda $G --chat false --max-new-tokens 32 --prompt "$P" > $OUT/gen.txt 2>$OUT/gen.err
[ -n "$SKIPG" ] || { cat $OUT/gen.txt; echo; tail -1 $OUT/gen.err; cmp $OUT/gen.txt .dev/p2/ref.txt && echo "GREEDY OUTPUT IDENTICAL TO THE CPU'S"; }
timeout ${TA:-340} /tmp/m/longctx bench-perf --backend cuda $G --lengths ${LA:-512,2048,8000} --decode-tokens 64 --repeats 1 --prefill-chunk 2048 --peers ${PA:-transformers} --out $OUT/a 2>&1 | grep -v "Converting\|Loading\|^\s*$" | tail -16
[ -n "$SKIPC" ] || LONGCTX_CUDA_ROW_KERNELS=0 timeout ${TC:-120} /tmp/m/longctx bench-perf --backend cuda $G --lengths ${LC:-8000} --decode-tokens 64 --repeats 1 --prefill-chunk 2048 --peers none --out $OUT/c 2>&1 | tail -3
