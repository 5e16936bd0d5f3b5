#!/usr/bin/env python3
"""Peer figures for `longctx bench-perf`: transformers + PyTorch on the same GGUF.

transformers dequantizes the GGUF (to float32; cast here to --dtype), then for each prompt length
measures one prefill forward pass (tokens/s) and a greedy decode of --decode tokens (tokens/s),
with peak memory: torch.cuda.max_memory_allocated on CUDA, the process's peak RSS on CPU.

    python3 transformers_peer.py --gguf FILE.gguf --ids prompt-ids.json --decode 64 \
        --device cuda --dtype bfloat16 --attn sdpa --cache dynamic --out peer.json

--ids is the file `longctx bench-perf` writes: {"512": [ids...], ...}, one prompt per length, so
both implementations process the same tokens. --cache static uses transformers' static cache,
which generate() compiles with torch.compile. On CUDA, peak memory is the process's GPU memory
as nvidia-smi reports it (what longctx reports too), beside torch's max_memory_allocated.
"""
import argparse
import json
import os
import platform
import subprocess
import threading
import time

import torch
import transformers
from transformers import AutoModelForCausalLM


class GpuPeak:
    """This process's GPU memory per nvidia-smi, sampled every 20 ms."""

    def __init__(self):
        self.peak, self.stop = 0, False
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.thread.start()

    def loop(self):
        pid = str(os.getpid())
        while not self.stop:
            out = subprocess.run(
                ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                capture_output=True, text=True).stdout
            for line in out.splitlines():
                p, _, m = line.partition(",")
                if p.strip() == pid:
                    self.peak = max(self.peak, int(m.strip()) * 1024 * 1024)
            time.sleep(0.02)


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def reset_host_peak():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def host_peak():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024


@torch.no_grad()
def measure(model, ids, decode, device, cache, repeats):
    x = torch.tensor([ids], device=device)
    # Prefill: one forward pass over the prompt, best of `repeats` after a warm-up.
    model(x[:, :16], use_cache=False)
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        model(x, use_cache=True, logits_to_keep=1)
        sync(device)
        best = min(best, time.perf_counter() - t)
    prefill_tps = len(ids) / best
    # Decode: generate() with min_new_tokens so every run decodes exactly `decode` tokens; the
    # time of a 1-token generate (the prefill) is subtracted.
    kw = dict(do_sample=False, pad_token_id=0)
    if cache == "static":
        kw["cache_implementation"] = "static"
    def gen(n):
        sync(device)
        t = time.perf_counter()
        model.generate(x, max_new_tokens=n, min_new_tokens=n, **kw)
        sync(device)
        return time.perf_counter() - t
    gen(decode)  # warm-up (compiles the static-cache path)
    t_prefill = min(gen(1) for _ in range(repeats))
    t_all = min(gen(decode + 1) for _ in range(repeats))
    decode_tps = decode / max(t_all - t_prefill, 1e-9)
    return prefill_tps, decode_tps


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--ids", required=True)
    ap.add_argument("--decode", type=int, default=64)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--attn", default="sdpa")
    ap.add_argument("--cache", default="dynamic", choices=["dynamic", "static"])
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    folder, file = os.path.split(os.path.abspath(args.gguf))
    dtype = getattr(torch, args.dtype)
    model = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=file, torch_dtype=dtype, attn_implementation=args.attn
    ).to(args.device).eval()
    with open(args.ids) as f:
        prompts = {int(k): v for k, v in json.load(f).items()}
    gpu = GpuPeak() if args.device == "cuda" else None
    rows = []
    for n in sorted(prompts):
        if gpu:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            time.sleep(0.1)
            gpu.peak = 0
        else:
            reset_host_peak()
        prefill, decode = measure(model, prompts[n], args.decode, args.device, args.cache, args.repeats)
        row = {
            "prompt_tokens": n,
            "decode_tokens": args.decode,
            "prefill_tokens_per_s": prefill,
            "decode_tokens_per_s": decode,
        }
        if gpu:
            time.sleep(0.1)
            row["peak_memory_bytes"] = gpu.peak
            row["torch_max_memory_allocated"] = torch.cuda.max_memory_allocated()
        else:
            row["peak_memory_bytes"] = host_peak()
        rows.append(row)
        print(json.dumps(rows[-1]), flush=True)
    info = {
        "peer": f"transformers {transformers.__version__} + torch {torch.__version__}",
        "device": torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or platform.machine(),
        "dtype": args.dtype,
        "attn_implementation": args.attn,
        "cache": args.cache,
        "threads": torch.get_num_threads(),
        "rows": rows,
    }
    with open(args.out, "w") as f:
        json.dump(info, f, indent=1)


if __name__ == "__main__":
    main()
