#!/bin/sh
# char_transformer.sh PROGRAM DIR [MAX_LOSS [TRAINING OPTIONS...]]: trains a tiny
# char_transformer for a few steps (with the extra options, e.g. --llama), checks that it
# learned (validation loss below MAX_LOSS nats/char, from about ln(vocabulary) = 5.2 at the
# start) and saved its files, then samples from the saved graph and checkpoint alone.
program=$1
dir=$2
max_loss=${3:-3.6}
shift 2
[ $# -gt 0 ] && shift
rm -rf "$dir"
out=$("$program" --steps 80 --dim 32 --heads 2 --layers 2 --context 32 --batch 16 --lr 1e-2 \
  --eval-every 40 --eval-batches 4 --out "$dir" --device cpu "$@" 2>&1)
status=$?
printf '%s\n' "$out"
[ $status -eq 0 ] || { echo "FAIL: training exited with $status"; exit 1; }
loss=$(printf '%s\n' "$out" | awk '/^val_loss:/ { print $2 }')
[ -n "$loss" ] || { echo "FAIL: no val_loss line"; exit 1; }
awk -v l="$loss" -v m="$max_loss" 'BEGIN { exit !(l + 0 < m + 0) }' ||
  { echo "FAIL: val_loss $loss is not below $max_loss"; exit 1; }
[ -s "$dir/char_transformer.pb" ] && [ -s "$dir/char_transformer.ckpt" ] ||
  { echo "FAIL: the graph or checkpoint is missing"; exit 1; }
sample=$("$program" --sample 60 --prompt "Th" --out "$dir" --device cpu 2>&1) ||
  { printf '%s\n' "$sample"; echo "FAIL: sampling from the saved files failed"; exit 1; }
printf 'sample: %s\n' "$sample"
[ "$(printf '%s' "$sample" | wc -c)" -ge 62 ] || { echo "FAIL: the sample is too short"; exit 1; }
# Through the KV cache (the default) and by recomputing the whole window (--no-cache), the same
# seed draws the same characters while the context fits: the prompt and 30 characters (context
# 32). After that the cache keeps half the window, and the two may part.
plain=$("$program" --sample 60 --prompt "Th" --out "$dir" --device cpu --no-cache 2>&1) ||
  { printf '%s\n' "$plain"; echo "FAIL: sampling with --no-cache failed"; exit 1; }
cached_head=$(printf '%s' "$sample" | head -c 32)
plain_head=$(printf '%s' "$plain" | head -c 32)
[ "$cached_head" = "$plain_head" ] ||
  { printf 'cached: %s\nplain:  %s\n' "$cached_head" "$plain_head";
    echo "FAIL: the cached sample is not the recomputed one"; exit 1; }
echo "PASS: val_loss $loss < $max_loss; sampled from the saved graph and checkpoint, with and" \
  "without the KV cache"
