#!/bin/bash
# (a) unfused CUDA (custom RMSNorm + decode attention kernels), prefill in 2,048-token chunks,
#     beside transformers; (b) fused CUDA with the same chunks at 8,000 tokens.
mkdir -p /tmp/m
[ -f /tmp/m/SmolLM2-135M-Instruct.Q4_1.gguf ] || cat /tmp/m/part_00 /tmp/m/part_01 .dev/p2/part_02 > /tmp/m/SmolLM2-135M-Instruct.Q4_1.gguf
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .dev/p2/gguf-*.whl && export PYTHONPATH=/tmp/site
export CUBECL_AUTOTUNE_LEVEL=minimal
G="--model-param path=/tmp/m/SmolLM2-135M-Instruct.Q4_1.gguf"
# Correctness: greedy continuations, fused (burn's ops) vs unfused (custom kernels), ~1,000-token prompt.
P="$(python3 -c 'print("Rust is a language empowering everyone to build reliable and efficient software. " * 70 + "Summarise the text above in one sentence.")')"
for f in 1 0; do
  LONGCTX_GPU_KERNELS=1 LONGCTX_CUDA_FUSION=$f timeout ${TG:-240} /tmp/m/longctx generate --model smollm2-135m --backend cuda $G --chat false --max-new-tokens 32 --prompt "$P" > $OUT/gen-fusion-$f.txt 2>$OUT/gen-fusion-$f.err
  echo "fusion=$f rc=$?"; cat $OUT/gen-fusion-$f.txt; echo
done
cmp $OUT/gen-fusion-1.txt $OUT/gen-fusion-0.txt && echo "GREEDY OUTPUTS IDENTICAL"
LONGCTX_GPU_KERNELS=1 LONGCTX_CUDA_FUSION=0 timeout ${TA:-250} /tmp/m/longctx bench-perf --backend cuda $G --lengths 512,2048,8000 --decode-tokens 64 --repeats 1 --prefill-chunk 2048 --peers ${PA:-transformers} --out $OUT/a 2>&1 | grep -v "Converting\|Loading\|^\s*$" | tail -25
[ -n "$SKIPB" ] || LONGCTX_CUDA_FUSION=1 timeout ${TB:-100} /tmp/m/longctx bench-perf --backend cuda $G --lengths ${LB:-8000} --decode-tokens 64 --repeats 1 --prefill-chunk 2048 --peers none --out $OUT/b 2>&1 | tail -6
