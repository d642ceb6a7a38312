#!/usr/bin/env bash
# Regenerate every figure: papermill runs the numbered notebooks in order with a profile's parameters.
#   bash run_all.sh [--profile smoke|default|rehearsal|paper] [--only NN ...] [--out DIR] [--check]
# First run creates .venv and installs requirements.lock (a few minutes); later runs reuse it.
# --check: only the preflight (models, data, gated access, devices, estimates; tg_utils.preflight).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

# Cheap checks before any set-up, so a typo fails in the first second on a fresh machine too.
args=("$@"); i=0
while [ $i -lt ${#args[@]} ]; do
  case "${args[$i]}" in
    --profile) p="${args[$((i+1))]:-}"; export TG_PROFILE="$p"
      [ -f "params/$p.yaml" ] || { echo "run_all.sh: unknown profile '$p'; available: $(ls params | sed -n 's/\.yaml$//p' | tr '\n' ' ')" >&2; exit 2; } ;;
    --only) j=$((i+1))
      while [ $j -lt ${#args[@]} ] && [[ "${args[$j]}" != --* ]]; do
        ls notebooks/"${args[$j]}"*.ipynb >/dev/null 2>&1 || { echo "run_all.sh: no notebook '${args[$j]}'; available: $(ls notebooks | sed -n 's/^\([0-9][0-9]\)_.*/\1/p' | tr '\n' ' ')" >&2; exit 2; }
        j=$((j+1)); done ;;
    -h|--help) sed -n '2,5p' "$0"; exit 0 ;;
  esac
  i=$((i+1))
done

source ./setup_env.sh
exec "$TG_PY" -m tg_utils.runner --kernel "$TG_KERNEL" "$@"
