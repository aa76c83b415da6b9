#!/usr/bin/env bash
# Time to accuracy: a model trained by Kiln's example and by the PyTorch script of the same model,
# data, batches, optimizer and schedule, one after the other on this machine with the same
# threads. Each evaluation is stamped with the seconds since the program started (data loading,
# graph building and evaluations included) and each run stops when it reaches the target
# (bench/stamp_until.py).
#
#   bench/time_to_accuracy.sh cnn  [TARGET] [EPOCHS]  Fashion-MNIST CNN, test accuracy >= TARGET
#                                                     (defaults 0.925 and 10)
#   bench/time_to_accuracy.sh char [TARGET] [STEPS]   character transformer on fortunes,
#                                                     validation loss <= TARGET (1.7 and 4000)
# After tools/kiln-dev build; PyTorch from bench/run.sh's virtual environment if it exists.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${KILN_BUILD_DIR:-$root/build}
model=${1:-cnn}
threads=$(nproc)
python=${KILN_BENCH_PYTHON:-$root/.bench-venv/bin/python}
[ -x "$python" ] || python=/usr/bin/python3
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
stamp() { "$python" "$root/bench/stamp_until.py" "$@"; }
export OMP_NUM_THREADS=$threads

case "$model" in
cnn)
  target=${2:-0.925} epochs=${3:-10}
  stamp kiln 'test accuracy ([0-9.]+)' "$target" above -- stdbuf -oL "$build/examples/fashion_mnist_cnn" \
    --out "$out" --epochs "$epochs" --threads "$threads" --logdir "$out/logs"
  stamp torch 'test_accuracy ([0-9.]+)' "$target" above -- "$python" "$root/bench/fashion_mnist_cnn_torch.py" \
    --epochs "$epochs" --threads "$threads"
  ;;
char)
  target=${2:-1.7} steps=${3:-4000}
  stamp kiln 'val_loss ([0-9.]+)$' "$target" below -- stdbuf -oL "$build/examples/char_transformer" \
    --out "$out" --steps "$steps" --threads "$threads" --logdir "$out/logs"
  stamp torch 'val_loss ([0-9.]+)$' "$target" below -- "$python" "$root/bench/char_transformer_torch.py" \
    --steps "$steps" --threads "$threads"
  ;;
*)
  echo "usage: bench/time_to_accuracy.sh cnn|char [TARGET] [EPOCHS|STEPS]" >&2
  exit 2
  ;;
esac
