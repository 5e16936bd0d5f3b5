#!/usr/bin/env python3
"""Sums a cubecl profile log (CUBECL_DEBUG_LOG=FILE CUBECL_DEBUG_OPTION=profile) per kernel.

Each launch is logged as `| 120.694µs | MatvecKernel | f32 | WgpuRuntime`; the first SKIP
launches of each kernel (compilation, autotune) are left out. Prints, slowest first: launches,
total and mean time, and the kernel's name with its first type argument.

    python3 profile-summary.py /tmp/prof.log [SKIP=3] [TOP=25]
"""
import re
import sys
from collections import defaultdict

UNITS = {"ns": 1e-6, "µs": 1e-3, "us": 1e-3, "ms": 1.0, "s": 1e3}
LINE = re.compile(r"^\|\s*([0-9.]+)(ns|µs|us|ms|s)\s*\|\s*([^|]+?)\s*(?:\|\s*([^|]+?)\s*)?\|")


def main() -> None:
    path = sys.argv[1]
    skip = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    top = int(sys.argv[3]) if len(sys.argv) > 3 else 25
    seen = defaultdict(int)
    total = defaultdict(float)
    count = defaultdict(int)
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            m = LINE.match(line)
            if not m:
                continue
            name = m.group(3) + (f" {m.group(4)}" if m.group(4) else "")
            seen[name] += 1
            if seen[name] <= skip:
                continue
            total[name] += float(m.group(1)) * UNITS[m.group(2)]
            count[name] += 1
    rows = sorted(total, key=total.get, reverse=True)
    grand = sum(total.values())
    print(f"{'launches':>8} {'total ms':>10} {'mean µs':>9}  kernel (first {skip} launches of each left out)")
    for name in rows[:top]:
        print(f"{count[name]:>8} {total[name]:>10.2f} {1e3 * total[name] / count[name]:>9.1f}  {name}")
    print(f"{sum(count.values()):>8} {grand:>10.2f} {'':>9}  all")


if __name__ == "__main__":
    main()
