#!/usr/bin/env python3
"""Peer figures for `longctx bench-perf`: llama.cpp (PyPI `llama-cpp-python`) on the same GGUF.

For each prompt of the --ids file ({"512": [ids...], ...}, written by `longctx bench-perf`), measures
the prompt evaluation (tokens/s, best of --repeats after a warm-up) and greedy decoding of --decode
tokens one at a time (tokens/s), with the process's peak resident set.

    python3 llamacpp_peer.py --gguf FILE.gguf --ids prompt-ids.json --decode 64 --threads 2 --out peer.json
"""
import argparse
import json
import os
import time

import llama_cpp
import numpy as np
from llama_cpp import Llama


def reset_host_peak():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def host_peak():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--ids", required=True)
    ap.add_argument("--decode", type=int, default=64)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--n-gpu-layers", type=int, default=0)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    with open(args.ids) as f:
        prompts = {int(k): v for k, v in json.load(f).items()}
    n_ctx = max(prompts) + args.decode + 8
    llm = Llama(model_path=args.gguf, n_ctx=n_ctx, n_threads=args.threads,
                n_threads_batch=args.threads, n_gpu_layers=args.n_gpu_layers,
                logits_all=False, verbose=False)
    rows = []
    for n in sorted(prompts):
        ids = prompts[n]
        reset_host_peak()
        best_prefill, best_decode = float("inf"), float("inf")
        for run in range(args.repeats + 1):
            llm.reset()
            t = time.perf_counter()
            llm.eval(ids)
            prefill = time.perf_counter() - t
            t = time.perf_counter()
            for _ in range(args.decode):
                # Greedy: argmax of the last position's logits, then evaluate that one token.
                # With logits_all=False, llama-cpp-python 0.3 no longer copies logits into
                # `llm.scores` (it stays zero), so read them from the context.
                logits = np.ctypeslib.as_array(llm._ctx.get_logits_ith(-1), shape=(llm.n_vocab(),))
                llm.eval([int(logits.argmax())])
            decode = time.perf_counter() - t
            if run > 0:  # the first run is a warm-up
                best_prefill, best_decode = min(best_prefill, prefill), min(best_decode, decode)
        rows.append({
            "prompt_tokens": n,
            "decode_tokens": args.decode,
            "prefill_tokens_per_s": n / best_prefill,
            "decode_tokens_per_s": args.decode / best_decode,
            "peak_memory_bytes": host_peak(),
        })
        print(json.dumps(rows[-1]), flush=True)
    info = {
        "peer": f"llama.cpp via llama-cpp-python {llama_cpp.__version__}",
        "device": "cpu" if args.n_gpu_layers == 0 else "gpu",
        "dtype": "GGUF as stored (quantized matmuls)",
        "threads": args.threads,
        "n_ctx": n_ctx,
        "rows": rows,
    }
    with open(args.out, "w") as f:
        json.dump(info, f, indent=1)


if __name__ == "__main__":
    main()
