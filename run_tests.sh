#!/usr/bin/env bash
# The test suite: pytest over tests/, then the smoke profile of every notebook into a temporary
# output folder (so every notebook is executed), then the rehearsal profile (the paper profile's code
# paths with tiny stand-in hub models, offline; a few minutes). Extra arguments go to pytest.
#   bash run_tests.sh [pytest args]        TG_SKIP_NOTEBOOKS=1 skips both notebook runs
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
source ./setup_env.sh

"$TG_PY" -m pytest "$@"

if [ -z "${TG_SKIP_NOTEBOOKS:-}" ]; then
  out=$(mktemp -d -t tg-smoke-XXXXXX)
  trap 'rm -rf "$out"' EXIT
  echo "== smoke profile of every notebook into $out"
  "$TG_PY" -m tg_utils.runner --kernel "$TG_KERNEL" --profile smoke --out "$out/smoke"
  echo "== rehearsal profile of every notebook into $out/rehearsal"
  "$TG_PY" -m tg_utils.runner --kernel "$TG_KERNEL" --profile rehearsal --out "$out/rehearsal"
fi
