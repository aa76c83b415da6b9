#!/bin/sh
# expect_restart.sh LAUNCH PROGRAM DATA OUT: a 2-rank job of an example stops after its first
# epoch; then it starts again as a job restarted after a failure does (KILN_RESTART_COUNT=1, as
# kiln-launch --max-restarts and torchrun set it), without --resume. It must continue from the
# checkpoint its ranks committed after the first epoch, not from scratch, and finish the second.
launch=$1 program=$2 data=$3 out=$4
rm -rf "$out"
set -- --epochs 2 --device cpu --threads 1 --train-limit 6000 --test-limit 2000 --data "$data" \
    --out "$out"
"$launch" --nproc-per-node 2 --master-port 29800 "$program" "$@" --stop-after 1 > /dev/null ||
  { echo "FAIL: the first attempt failed"; exit 1; }
ls "$out"/*_steps/step-*/COMMITTED || { echo "FAIL: no committed checkpoint"; exit 1; }
sh "$(dirname "$0")/expect_accuracy.sh" 0.7 "$launch" --nproc-per-node 2 --master-port 29800 \
  env KILN_RESTART_COUNT=1 "$program" "$@" > "$out/restarted.log"
status=$?
cat "$out/restarted.log"
[ $status -eq 0 ] || exit 1
grep -q '^\[rank 0\]   restart 1 of the job' "$out/restarted.log" ||
  { echo "FAIL: the restarted job did not say it restarted"; exit 1; }
grep -q '^\[rank 0\]   at step 47 (epoch 1)' "$out/restarted.log" ||
  { echo "FAIL: the restarted job did not continue after epoch 1 (step 47)"; exit 1; }
echo "PASS: the restarted job continued from its first epoch's checkpoint"
