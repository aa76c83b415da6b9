#!/usr/bin/env bash
# Time to accuracy: the Fashion-MNIST CNN example trained by Kiln and by PyTorch
# (bench/fashion_mnist_cnn_torch.py: the same model, data, batches, optimizer and schedule), one
# after the other on this machine with the same threads, each epoch's test accuracy and the wall
# time since the program started (data loading and evaluations included), and when each first
# reaches the target.
#
#   bench/time_to_accuracy.sh [TARGET] [EPOCHS]     (defaults 0.925 and 10; after tools/kiln-dev build)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${KILN_BUILD_DIR:-$root/build}
target=${1:-0.925}
epochs=${2:-10}
threads=$(nproc)
python=${KILN_BENCH_PYTHON:-$root/.bench-venv/bin/python}
[ -x "$python" ] || python=/usr/bin/python3
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

# Kiln: each "test accuracy" line stamped with the seconds since the program started (data
# loading and graph building included, as the PyTorch script counts from before it loads data).
stdbuf -oL "$build/examples/fashion_mnist_cnn" --out "$out" --epochs "$epochs" --threads "$threads" --logdir "$out/logs" |
  "$python" -c '
import re, sys, time
start = time.perf_counter()
epoch = 0
for line in sys.stdin:
    m = re.search(r"test accuracy ([0-9.]+)", line)
    if m:
        epoch += 1
        print(f"kiln epoch {epoch} test_accuracy {m.group(1)} seconds {time.perf_counter() - start:.1f}", flush=True)
' | tee "$out/kiln.txt"
OMP_NUM_THREADS=$threads "$python" "$root/bench/fashion_mnist_cnn_torch.py" --epochs "$epochs" \
  --threads "$threads" | sed 's/^/torch /' | tee "$out/torch.txt"
for who in kiln torch; do
  # Lines read "<who> epoch E test_accuracy A seconds S".
  awk -v t="$target" -v who="$who" '$5 + 0 >= t + 0 {print "time_to_" t, who, $7 " s (epoch " $3 ")"; found = 1; exit}
       END {if (!found) print "time_to_" t, who, "not reached"}' "$out/$who.txt"
done
