#!/usr/bin/env python3
"""Per-kernel-class time and DRAM traffic of one profiled decode step (bench --profile-step).

  ncu --nvtx --nvtx-include decode_step/ --clock-control none --print-kernel-base function \
      --metrics gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum --print-units base \
      --csv build/bench --config qwen3-30b-a3b --profile-step > step.csv
  python3 apps/bench_profile.py step.csv [--copy-gbs 2990]

Prints, per kernel function: launches, total µs, share of the step, DRAM MB read+written and the
achieved bandwidth as a fraction of the copy bandwidth (the gap to the bytes each class moves).
"""
import argparse
import collections
import csv
import sys


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("csv")
    ap.add_argument("--copy-gbs", type=float, default=2990.0)
    args = ap.parse_args()
    lines = open(args.csv).read().splitlines()
    start = next((i for i, l in enumerate(lines) if l.startswith('"ID"')), None)
    if start is None:
        sys.exit(f"{args.csv}: no ncu CSV table found")
    kernels = collections.defaultdict(dict)
    for row in csv.DictReader(lines[start:]):
        value = float(row["Metric Value"].replace(",", "")) if row["Metric Value"] else 0.0
        kernels[row["ID"]]["name"] = row["Kernel Name"]
        kernels[row["ID"]][row["Metric Name"]] = value
    classes = collections.defaultdict(lambda: [0, 0.0, 0.0])
    for k in kernels.values():
        c = classes[k["name"]]
        c[0] += 1
        c[1] += k.get("gpu__time_duration.sum", 0.0) / 1e3  # ns -> µs
        c[2] += k.get("dram__bytes_read.sum", 0.0) + k.get("dram__bytes_write.sum", 0.0)
    total_us = sum(c[1] for c in classes.values())
    total_bytes = sum(c[2] for c in classes.values())
    print(f"{len(kernels)} kernels, {total_us:.1f} µs of kernel time, {total_bytes / 1e6:.1f} MB DRAM traffic "
          f"({total_bytes / (total_us * 1e-6) / 1e9 / args.copy_gbs * 100:.1f}% of copy over the kernel time)")
    print(f"{'kernel':44s} {'n':>5s} {'µs':>9s} {'share':>6s} {'MB':>9s} {'of copy':>8s}")
    for name, (n, us, b) in sorted(classes.items(), key=lambda kv: -kv[1][1]):
        bw = b / (us * 1e-6) / 1e9 if us else 0.0
        print(f"{name[:44]:44s} {n:5d} {us:9.1f} {us / total_us * 100:5.1f}% {b / 1e6:9.2f} {bw / args.copy_gbs * 100:7.1f}%")


if __name__ == "__main__":
    main()
