#!/usr/bin/env bash
# Issue 6 records on the device's CPU (flex): cells from a file, one per line,
# "METHOD BUDGET TASK [extra longctx flags]", TASK one of ppl, n7, n64. W workers, each pinned
# to its own 2 cores (taskset, so rayon and the record's provenance see 2 threads), take cells
# round-robin and start one only if it can finish before DEADLINE seconds from now (ESTIMATE per
# task). Records go to /tmp/runs (a cell whose record exists is skipped by longctx itself).
set -uo pipefail
CELLS=$1; W=${W:-16}; DEADLINE=${DEADLINE:-560}
export LONGCTX_CACHE=/tmp/cache
B=/tmp/m/longctx
R=/tmp/runs
mkdir -p $R /tmp/logs
end=$(( $(date +%s) + DEADLINE ))
mapfile -t lines < <(grep -v '^#' "$CELLS" | grep -v '^$')
worker() {
  local w=$1 i=0
  for line in "${lines[@]}"; do
    if (( i++ % W != w )); then continue; fi
    set -- $line
    local m=$1 budget=$2 task=$3; shift 3
    local est args
    case $task in
      ppl) est=${EST_PPL:-200}; args=(--task perplexity --lengths 4000);;
      n7) est=${EST_N7:-360}; args=(--task niah --unit tokens --lengths 3300 --depths 5 --iterations 1 --digits 7 --max-new-tokens 16);;
      n64) est=${EST_N64:-420}; args=(--task niah --unit tokens --lengths 3300 --depths 5 --iterations 1 --digits 64 --max-new-tokens 72);;
    esac
    if (( $(date +%s) + est > end )); then echo "SKIP (time) $line"; continue; fi
    local t0=$(date +%s)
    timeout $(( end - $(date +%s) )) taskset -c $((2*w)),$((2*w+1)) $B run --backend flex --model smollm2-135m \
      --method $m --budget $budget "$@" "${args[@]}" --out $R > /tmp/logs/w$w.$i.log 2>&1
    echo "rc=$? $(( $(date +%s) - t0 ))s $line"
  done
}
for w in $(seq 0 $((W-1))); do worker $w & done
wait
tar czf /tmp/runs.tgz -C /tmp runs logs; [ -n "${OUT:-}" ] && [ -d "${OUT:-}" ] && cp /tmp/runs.tgz $OUT/ 2>/dev/null; echo ALLDONE > /tmp/cells.done
