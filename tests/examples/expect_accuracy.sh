#!/bin/sh
# expect_accuracy.sh MIN PROGRAM ARGS...: runs an example and passes when the "test_accuracy:"
# line it prints is at least MIN (the output is shown either way). Under kiln-launch, rank 0's
# line ("[rank 0] test_accuracy: ...") is the one read.
min=$1
shift
out=$("$@" 2>&1)
status=$?
printf '%s\n' "$out"
[ $status -eq 0 ] || { echo "FAIL: exit status $status"; exit 1; }
printf '%s\n' "$out" | awk -v min="$min" '
  { sub(/^\[rank 0\] /, "") }
  /^test_accuracy:/ { seen = 1; acc = $2 }
  END {
    if (!seen) { print "FAIL: no test_accuracy line"; exit 1 }
    if (acc + 0 < min + 0) { printf "FAIL: test_accuracy %s is below %s\n", acc, min; exit 1 }
    printf "PASS: test_accuracy %s >= %s\n", acc, min
  }'
