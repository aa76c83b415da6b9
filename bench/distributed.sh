#!/usr/bin/env bash
# Kiln's distributed side beside PyTorch's (torch.distributed with Gloo, DDP), same machine,
# same run, same sizes:
#   1. all-reduce bus bandwidth, 2 and 4 ranks (nccl-tests' busbw = algbw * 2 (n - 1) / n), and
#      reduce-scatter's (busbw = algbw * (n - 1) / n);
#   2. the data-parallel MLP 784-512-512-10 step: one process with 2 threads against 2 ranks
#      with 1 thread each (global batch 128), buckets of 1 MiB; then on 2 ranks with the
#      gradients all-reduced in bf16 (DDP's bf16_compress_hook), then as PowerSGD of rank 1
#      (DDP's powerSGD_hook);
#   3. the same MLP with Adam on 2 ranks, its state replicated (DDP), sharded (Kiln's
#      shard_optimizer_state, PyTorch's ZeroRedundancyOptimizer), and with the gradients
#      reduce-scattered too (Kiln's shard_gradients, PyTorch's FSDP2 fully_shard without
#      resharding after forward): step time and state bytes;
#   4. the overlap of the all-reduces with backward in rank 0's Chrome trace of one step.
#
#   bench/distributed.sh      (PyTorch 2.x from bench's .bench-venv/, as bench/run.sh makes it)
#
# Prints the measurements, then "ratio <case> <x>" lines (Kiln / PyTorch time; below 1: Kiln is
# faster). The trace goes to bench-out/dp_trace.json (open it in chrome://tracing or Perfetto).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${KILN_BUILD_DIR:-$root/build}
[ -x "$build/bench/distributed_bench" ] || "$root/tools/kiln-dev" build >/dev/null
python=${KILN_BENCH_PYTHON:-$root/.bench-venv/bin/python}
"$python" -c 'import torch' 2>/dev/null || { echo "no PyTorch: run bench/run.sh once first" >&2; exit 1; }
launch=$build/tools/kiln-launch
kiln_bench=$build/bench/distributed_bench
out=$root/bench-out
mkdir -p "$out"
torchrun() {  # NPROC THREADS ARGS...
  local n=$1 t=$2 output status=0
  shift 2
  # A torch rank sometimes aborts as its process group goes, after it printed its figures: say
  # so, and keep them (the ratios below fail where a figure is missing).
  output=$(OMP_NUM_THREADS=$t "$python" -m torch.distributed.run --nproc-per-node "$n" \
    --master-port 29950 "$root/bench/torch_ddp_bench.py" "$@" 2>/dev/null) || status=$?
  [ "$status" -eq 0 ] || echo "note: torchrun $n ranks, $* exited with status $status" >&2
  grep -v '^\[' <<<"$output" || true
}
strip() { sed 's/^\[rank 0\] //'; }

echo "PyTorch $("$python" -c 'import torch; print(torch.__version__)'), $(nproc) cores"
for n in 2 4; do
  "$launch" --nproc-per-node "$n" --master-port 29930 "$kiln_bench" busbw | strip >"$out/kiln_busbw_$n.txt"
  torchrun "$n" 1 busbw >"$out/torch_busbw_$n.txt"
  echo "== all_reduce f32, $n ranks (Gloo over loopback)"
  printf "%12s %14s %14s %14s %14s\n" bytes kiln_us torch_us kiln_busbw torch_busbw
  paste <(grep '^busbw' "$out/kiln_busbw_$n.txt") <(grep '^busbw' "$out/torch_busbw_$n.txt") |
    awk '{printf "%12d %14.1f %14.1f %14.3f %14.3f\n", $2, $3, $8, $5, $10}'
  echo "== reduce_scatter f32, $n ranks (input bytes)"
  printf "%12s %14s %14s %14s %14s\n" bytes kiln_us torch_us kiln_busbw torch_busbw
  paste <(grep '^rsbw' "$out/kiln_busbw_$n.txt") <(grep '^rsbw' "$out/torch_busbw_$n.txt") |
    awk '{printf "%12d %14.1f %14.1f %14.3f %14.3f\n", $2, $3, $8, $5, $10}'
done

echo "== data-parallel MLP step (global batch 128)"
kiln1=$("$kiln_bench" dp_step --threads 2 | strip)
torch1=$(torchrun 1 2 dp_step)
kiln2=$("$launch" --nproc-per-node 2 --master-port 29940 "$kiln_bench" dp_step --threads 1 \
  --trace "$out/dp_trace.json" | strip)
torch2=$(torchrun 2 1 dp_step)
kiln_bf16=$("$launch" --nproc-per-node 2 --master-port 29942 "$kiln_bench" dp_step --threads 1 \
  --compress bf16 | strip)
torch_bf16=$(torchrun 2 1 dp_step bf16)
kiln_power=$("$launch" --nproc-per-node 2 --master-port 29943 "$kiln_bench" dp_step --threads 1 \
  --power-sgd 1 --bucket-mib 25 | strip)
torch_power=$(torchrun 2 1 dp_step powersgd1)
printf "kiln  %s\ntorch %s\nkiln  %s\ntorch %s\n" "$kiln1" "$torch1" "$kiln2" "$torch2"
printf "kiln  %s\ntorch %s\n" "$kiln_bf16" "$torch_bf16"
printf "kiln  %s\ntorch %s\n" "$kiln_power" "$torch_power"

echo "== data-parallel Adam step, optimizer state replicated, sharded (ZeRO stage 1), gradients too (stage 2), 2 ranks"
kiln_adam=$("$launch" --nproc-per-node 2 --master-port 29945 "$kiln_bench" adam_step --threads 1 | strip)
torch_adam=$(torchrun 2 1 adam_step)
sed 's/^/kiln  /' <<<"$kiln_adam"
sed 's/^/torch /' <<<"$torch_adam"
echo "== the same, 8 hidden layers of 512 and buckets of 4 MiB (each bucket holds several layers)"
kiln_deep=$("$launch" --nproc-per-node 2 --master-port 29947 "$kiln_bench" adam_step --threads 1 \
  --hidden 8 --bucket-mib 4 | strip)
torch_deep=$(torchrun 2 1 adam_step 8 4)
sed 's/^/kiln  /' <<<"$kiln_deep"
sed 's/^/torch /' <<<"$torch_deep"

echo "== overlap in rank 0's trace (last step)"
"$python" - "$out/dp_trace.json" <<'EOF'
import json, sys
events = json.load(open(sys.argv[1]))["traceEvents"]
comm_tid = max(e["tid"] for e in events if e["cat"] == "all_reduce")
# The last step: events after the last variable update of the step before.
steps, current = [], []
for e in events:
    current.append(e)
    if e["cat"] in ("sgd_update",) and sum(x["cat"] == "sgd_update" for x in current) == 6:
        steps.append(current)
        current = []
step = steps[-1]
reduces = [e for e in step if e["cat"] == "all_reduce"]
compute = [e for e in step if e["tid"] != comm_tid]
def overlap(a, b):
    return max(0.0, min(a["ts"] + a["dur"], b["ts"] + b["dur"]) - max(a["ts"], b["ts"]))
busy = sum(e["dur"] for e in reduces)
hidden = sum(overlap(r, c) for r in reduces for c in compute)
start = min(e["ts"] for e in step)
end = max(e["ts"] + e["dur"] for e in step)
for r in reduces:
    print(f"all_reduce {r['name']}: {r['ts'] - start:8.1f} .. {r['ts'] + r['dur'] - start:8.1f} us")
last_backward = max(e["ts"] + e["dur"] for e in compute if e["cat"] in ("matmul", "matmul_bias"))
print(f"step {end - start:.1f} us; backward's last product ends at {last_backward - start:.1f} us")
print(f"all-reduce time {busy:.1f} us, of which {hidden:.1f} us ({100 * hidden / max(busy, 1e-9):.0f}%) "
      "overlaps compute on another stream")
EOF

echo "== ratios (Kiln time / PyTorch time)"
for n in 2 4; do
  paste <(grep '^busbw' "$out/kiln_busbw_$n.txt") <(grep '^busbw' "$out/torch_busbw_$n.txt") |
    awk -v n="$n" '$2 == 65536 || $2 == 67108864 {printf "ratio allreduce_%dB_%dranks %.2f\n", $2, n, $3 / $8}'
  paste <(grep '^rsbw' "$out/kiln_busbw_$n.txt") <(grep '^rsbw' "$out/torch_busbw_$n.txt") |
    awk -v n="$n" 'function out() {printf "ratio reduce_scatter_%dB_%dranks %.2f\n", $2, n, $3 / $8}
      NR == 3 {out()} {last = $0} END {$0 = last; out()}'
done
ms() { awk '{print $(NF-1)}' <<<"$1"; }
awk -v k="$(ms "$kiln1")" -v t="$(ms "$torch1")" 'BEGIN{printf "ratio dp_step_1rank %.2f\n", k / t}'
awk -v k="$(ms "$kiln2")" -v t="$(ms "$torch2")" 'BEGIN{printf "ratio dp_step_2ranks %.2f\n", k / t}'
awk -v k="$(ms "$kiln_bf16")" -v t="$(ms "$torch_bf16")" \
  'BEGIN{printf "ratio dp_step_2ranks_bf16_wire %.2f\n", k / t}'
awk -v k="$(ms "$kiln_power")" -v t="$(ms "$torch_power")" \
  'BEGIN{printf "ratio dp_step_2ranks_powersgd1 %.2f\n", k / t}'
for s in 0 1 2; do
  for model in adam deep; do
    kiln_lines=kiln_$model torch_lines=torch_$model
    k=$(grep "sharded=$s" <<<"${!kiln_lines}" | awk '{print $(NF-1)}')
    t=$(grep "sharded=$s" <<<"${!torch_lines}" | awk '{print $(NF-1)}')
    name=$([ "$model" = adam ] && echo adam_step || echo adam_step_deep)
    awk -v k="$k" -v t="$t" -v s="$s" -v n="$name" \
      'BEGIN{printf "ratio %s_2ranks_sharded%d %.2f\n", n, s, k / t}'
  done
done
