#!/usr/bin/env bash
# Kiln vs PyTorch, side by side, on this machine: one command builds Kiln and runs every case.
#
#   bench/run.sh            (after tools/kiln-dev build, or it builds first)
#
# PyTorch (Debian's python3-torch under /usr/bin/python3) runs each case with
# OMP_NUM_THREADS=OPENBLAS_NUM_THREADS=1 and =2 and keeps its faster time; Kiln runs with 2
# intra-op threads (this machine's cores). Prints a table, then one "ratio <case> <x>" line per
# case (Kiln time / reference time; below 1 means Kiln is faster).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${KILN_BUILD_DIR:-$root/build}
[ -x "$build/bench/kiln_bench" ] || "$root/tools/kiln-dev" build >/dev/null
threads=$(nproc)
kiln() { "$build/bench/kiln_bench" "$@" --threads "$threads"; }
torch_best() {  # the faster of 1 and N threads; prints "<line> threads=<n>"
  local best="" best_t=""
  for t in 1 "$threads"; do
    line=$(OMP_NUM_THREADS=$t OPENBLAS_NUM_THREADS=$t MKL_NUM_THREADS=$t \
           /usr/bin/python3 "$root/bench/torch_bench.py" "$1" --threads "$t")
    time=$(awk '{print $2}' <<<"$line")
    if [ -z "$best_t" ] || awk "BEGIN{exit !($time < $best_t)}"; then best="$line threads=$t"; best_t=$time; fi
  done
  echo "$best"
}
field() { tr ' ' '\n' <<<"$1" | sed -n "s/^$2=//p"; }

echo "Kiln vs PyTorch $(/usr/bin/python3 -c 'import torch; print(torch.__version__)') on $(nproc) cores," \
     "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(date -u +%Y-%m-%d)"
mlp=$(kiln mlp_step); tmlp=$(torch_best mlp_step)
mem=$(kiln mlp_memory); tmem=$(torch_best mlp_memory)
mm=$(kiln matmul); sg=$("$build/bench/sgemm_reference" "$threads"); tmm=$(torch_best matmul)
dp=$(kiln dispatch); tdp=$(torch_best dispatch)
fused=$(kiln chain_fused); unfused=$(kiln chain_unfused); tchain=$(torch_best chain_unfused)

# Nominal peak: cores x GHz x flops/cycle (2 FMA units x 16 f32 lanes x 2 with AVX-512, x 8
# lanes with AVX2).
ghz=$(awk -F: '/cpu MHz/{print $2/1000; exit}' /proc/cpuinfo)
lanes=$(grep -qw avx512f /proc/cpuinfo && echo 16 || echo 8)
peak=$(awk "BEGIN{print $threads * $ghz * 2 * $lanes * 2}")

ms() { awk "BEGIN{printf \"%.3f ms\", $1 * 1000}"; }
ratio() { awk "BEGIN{printf \"%.3f\", $1 / $2}"; }
t() { awk '{print $2}' <<<"$1"; }
printf '\n%-36s %-26s %-30s %s\n' case kiln reference ratio
printf '%-36s %-26s %-30s %s\n' "MLP 784-512-512-10 step, batch 128" "$(ms "$(t "$mlp")")" \
  "torch $(ms "$(t "$tmlp")") ($(field "$tmlp" threads) thr)" "$(ratio "$(t "$mlp")" "$(t "$tmlp")")"
printf '%-36s %-26s %-30s %s\n' "matmul 1024^3 f32" "$(field "$mm" gflops) GFLOP/s" \
  "OpenBLAS $(field "$sg" gflops), torch $(field "$tmm" gflops)" "$(ratio "$(t "$mm")" "$(t "$sg")")"
printf '%-36s %-26s %-30s %s\n' "  % of nominal peak (${peak%.*} GFLOP/s)" \
  "$(awk "BEGIN{printf \"%.0f%%\", 100 * $(field "$mm" gflops) / $peak}")" \
  "$(awk "BEGIN{printf \"%.0f%%\", 100 * $(field "$sg" gflops) / $peak}")" ""
printf '%-36s %-26s %-30s %s\n' "dispatch, per node (fusion off)" "$(field "$dp" per_node_us) us" \
  "torch $(field "$tdp" per_node_us) us" "$(ratio "$(field "$dp" per_node_us)" "$(field "$tdp" per_node_us)")"
printf '%-36s %-26s %-30s %s\n' "8 elementwise ops on 16M f32" "fused $(ms "$(t "$fused")")" \
  "unfused $(ms "$(t "$unfused")"), torch $(ms "$(t "$tchain")")" "$(ratio "$(t "$fused")" "$(t "$unfused")")"
printf '%-36s %-26s %-30s %s\n' "peak RSS, MLP step batch 1024" "$(field "$mem" peak_rss_kib) KiB" \
  "torch $(field "$tmem" peak_rss_kib) KiB" "$(ratio "$(field "$mem" peak_rss_kib)" "$(field "$tmem" peak_rss_kib)")"
echo
echo "ratio mlp_step $(ratio "$(t "$mlp")" "$(t "$tmlp")")"
echo "ratio matmul_vs_openblas $(ratio "$(t "$mm")" "$(t "$sg")")"
echo "ratio dispatch_per_node $(ratio "$(field "$dp" per_node_us)" "$(field "$tdp" per_node_us)")"
echo "ratio chain_fused_vs_unfused $(ratio "$(t "$fused")" "$(t "$unfused")")"
echo "ratio chain_fused_vs_torch $(ratio "$(t "$fused")" "$(t "$tchain")")"
echo "ratio mlp_peak_rss $(ratio "$(field "$mem" peak_rss_kib)" "$(field "$tmem" peak_rss_kib)")"
