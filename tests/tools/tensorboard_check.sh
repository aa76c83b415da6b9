#!/bin/sh
# An example's TensorBoard logs read by the real tensorboard package (from PyPI, into a
# virtual environment kept in the build tree): the scalars it logs and its graph's node count.
# Skips (exit 77) when tensorboard cannot be installed, as on a machine without network.
# Usage: tensorboard_check.sh EXAMPLE_BINARY WORK_DIR
set -eu
example=$1 work=$2
here=$(dirname "$0")
venv=$(dirname "$work")/tensorboard-venv
if ! "$venv/bin/python" -c "import tensorboard" 2>/dev/null; then
  rm -rf "$venv"
  if ! { python3 -m venv "$venv" && "$venv/bin/python" -m pip install -q tensorboard; } \
      >"$venv.log" 2>&1; then
    echo "SKIPPED: tensorboard could not be installed from PyPI (see $venv.log)"
    exit 77
  fi
fi
rm -rf "$work"
"$example" --epochs 1 --train-limit 640 --test-limit 500 --device cpu --out "$work" \
  >"$work.log" 2>&1 || { cat "$work.log"; exit 1; }
nodes=$(sed -n 's/.*training graph (\([0-9]*\) nodes).*/\1/p' "$work.log")
[ -n "$nodes" ] || { cat "$work.log"; echo "the example did not report its node count"; exit 1; }
"$venv/bin/python" "$here/tensorboard_check.py" "$work/logs" "$nodes"
