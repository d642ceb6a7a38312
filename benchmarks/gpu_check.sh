#!/usr/bin/env bash
# GPU check: the rehearsal profile (tiny stand-ins of the paper's hub models, offline) with device cuda,
# one notebook at a time, then each notebook's wall time (run_log.csv) and peak GPU memory (nvidia-smi,
# sampled every 0.2 s; the busiest GPU, other processes included).
#   bash benchmarks/gpu_check.sh [OUT]          (default /tmp/tg-gpu-check; a second call resumes)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source ./setup_env.sh
out=${1:-/tmp/tg-gpu-check}
prof=params/rehearsal-cuda.yaml               # the rehearsal with device: cuda (removed again on exit)
smi=
trap 'rm -f "$prof"; [ -n "$smi" ] && kill "$smi" 2>/dev/null || true' EXIT
command -v nvidia-smi >/dev/null || { echo "gpu_check.sh: no nvidia-smi: not a CUDA machine" >&2; exit 2; }
sed 's/^\(  device: \)cpu$/\1cuda/' params/rehearsal.yaml > "$prof"
mkdir -p "$out"
for nb in 01 02 03 04 05 06 07; do
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 > "$out/gpu_mem_$nb.txt" &
  smi=$!
  "$TG_PY" -m tg_utils.runner --kernel "$TG_KERNEL" --profile rehearsal-cuda --out "$out" --only "$nb"
  kill "$smi"; wait "$smi" 2>/dev/null || true; smi=
done
echo "== rehearsal on cuda: $out"
printf '%-32s %8s %14s\n' notebook wall_s peak_gpu_MiB
tail -n +2 "$out/run_log.csv" | tail -n 7 | while IFS=, read -r _ _ name status wall _; do
  peak=$(sort -n "$out/gpu_mem_${name:0:2}.txt" | tail -n 1)
  printf '%-32s %8s %14s  %s\n' "$name" "$wall" "${peak:-?}" "$status"
done
