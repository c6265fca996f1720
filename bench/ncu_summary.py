#!/usr/bin/env python3
"""Per-kernel time table from an `ncu --csv --metrics gpu__time_duration.sum` log.

Where does a step's time go? ncu times each kernel alone (serialised, clocks untouched with
--clock-control none), so the sum is the GPU time without launch gaps; grouped by kernel name
(template arguments cut), biggest first.
Usage: ncu --clock-control none --csv --metrics gpu__time_duration.sum CMD > log; ncu_summary.py log [--top N]
"""
import csv
import re
import sys
from collections import defaultdict


def short(name):
    name = name.replace("(anonymous namespace)::", "")
    name = re.sub(r"^void ", "", name)
    name = re.sub(r"\(.*$", "", name)           # arguments
    while re.search(r"<[^<>]*>", name):         # template arguments, innermost first
        name = re.sub(r"<[^<>]*>", "", name)
    return name[:70]


def main():
    path = sys.argv[1]
    top = int(sys.argv[sys.argv.index("--top") + 1]) if "--top" in sys.argv else 25
    rows = []
    with open(path, newline="") as f:
        lines = [l for l in f if l.startswith('"')]  # ncu's own messages are not CSV
    for r in csv.DictReader(lines):
        if r.get("Metric Name") != "gpu__time_duration.sum":
            continue
        value = float(r["Metric Value"].replace(",", ""))
        unit = r.get("Metric Unit", "nsecond")
        scale = {"nsecond": 1e-3, "usecond": 1.0, "msecond": 1e3, "second": 1e6}.get(unit, 1e-3)
        rows.append((short(r["Kernel Name"]), value * scale))
    total = sum(t for _, t in rows) or 1.0
    by = defaultdict(lambda: [0, 0.0])
    for n, t in rows:
        by[n][0] += 1
        by[n][1] += t
    print(f"{len(rows)} kernels, {total / 1e3:.3f} ms of GPU time")
    print(f"| kernel | launches | total ms | mean us | share |")
    print(f"|---|---|---|---|---|")
    for n, (c, t) in sorted(by.items(), key=lambda kv: -kv[1][1])[:top]:
        print(f"| {n} | {c} | {t / 1e3:.3f} | {t / c:.1f} | {100 * t / total:.1f}% |")


if __name__ == "__main__":
    main()
