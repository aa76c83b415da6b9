"""Runs a training program, stamps each evaluation it prints with the seconds since it started,
and stops it once the metric reaches a target: time to accuracy for one framework.

    stamp_until.py LABEL PATTERN TARGET (above|below) -- COMMAND [ARGS...]

PATTERN is a regular expression whose first group is the metric (a test accuracy, a validation
loss); TARGET is reached when the metric is >= TARGET (above) or <= TARGET (below). Prints one
line per evaluation, "LABEL eval N METRIC seconds S", then "time_to_TARGET LABEL S s (eval N)"
or "time_to_TARGET LABEL not reached". The clock starts before the program does, so its data
loading, graph building and evaluations all count, for every framework alike.
"""
import re
import subprocess
import sys
import time


def main():
    if len(sys.argv) < 7 or sys.argv[5] != "--" or sys.argv[4] not in ("above", "below"):
        sys.exit(__doc__)
    label, pattern, target, direction = sys.argv[1], re.compile(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
    start = time.perf_counter()
    program = subprocess.Popen(sys.argv[6:], stdout=subprocess.PIPE, text=True, bufsize=1)
    evals, reached = 0, None
    for line in program.stdout:
        m = pattern.search(line)
        if not m:
            continue
        evals += 1
        metric, seconds = float(m.group(1)), time.perf_counter() - start
        print(f"{label} eval {evals} {metric:.4f} seconds {seconds:.1f}", flush=True)
        if metric >= target if direction == "above" else metric <= target:
            reached = (seconds, evals)
            program.terminate()  # the rest of its schedule would not change the answer
            break
    program.wait()
    if reached is None and program.returncode != 0:
        sys.exit(f"{label}: {' '.join(sys.argv[6:])} failed with status {program.returncode}")
    print(f"time_to_{sys.argv[3]} {label} " +
          (f"{reached[0]:.1f} s (eval {reached[1]})" if reached else "not reached"), flush=True)


if __name__ == "__main__":
    main()
