"""Summarizes an Nsight Compute CSV of kernel durations, one row per kernel name.

    ncu --csv --page raw --print-units base --metrics gpu__time_duration.sum PROGRAM > K.csv
    python3 bench/ncu_summary.py K.csv STEPS [TOP]

STEPS is how many training steps the program ran (warm-up included): a kernel launched at least
once per step is counted per step (its launches / STEPS times its median duration); kernels
launched fewer times (initialization, one-off searches) are listed apart. The per-step total
is the GPU time of one step's kernels, to hold beside the step's wall time: the difference is
launch gaps and host work.
"""
import collections
import csv
import statistics
import sys


def durations(path):
    """{kernel name: [ns, ...]} from ncu's raw CSV (its units row and non-kernel lines skipped)."""
    by_kernel = collections.defaultdict(list)
    with open(path, newline="") as f:
        lines = [line for line in f if line.startswith('"')]  # ncu's own messages are not quoted
    for row in csv.DictReader(lines):
        try:
            ns = float(row["gpu__time_duration.sum"].replace(",", ""))
        except (KeyError, ValueError):
            continue
        by_kernel[row.get("Kernel Name", "?")].append(ns)
    return by_kernel


def main():
    path, steps = sys.argv[1], int(sys.argv[2])
    top = int(sys.argv[3]) if len(sys.argv) > 3 else 40
    by_kernel = durations(path)
    if not by_kernel:
        print(f"{path}: no kernel durations")
        return
    per_step, rare = [], []
    for name, ns in by_kernel.items():
        row = (len(ns) / steps * statistics.median(ns) / 1e3, len(ns), statistics.median(ns) / 1e3,
               name)
        (per_step if len(ns) >= steps else rare).append(row)
    total = sum(r[0] for r in per_step)
    kernels = sum(r[1] for r in per_step) / steps
    print(f"{path}: {kernels:.0f} kernels and {total:.1f} us of GPU time per step ({steps} steps)")
    print(f"  {'us/step':>8s} {'launches':>8s} {'median us':>9s}  kernel")
    for us, launches, median, name in sorted(per_step, reverse=True)[:top]:
        print(f"  {us:8.1f} {launches:8d} {median:9.1f}  {name[:110]}")
    if rare:
        print(f"  launched fewer than once per step: {len(rare)} kernels, "
              f"{sum(r[1] * r[2] for r in rare):.1f} us in all")


if __name__ == "__main__":
    main()
