#!/usr/bin/env bash
# The test suite: pytest over tests/, then the smoke profile of every notebook into a temporary
# output folder (so every notebook is executed). Extra arguments go to pytest.
#   bash run_tests.sh [pytest args]        TG_SKIP_NOTEBOOKS=1 skips the notebook run
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
source ./setup_env.sh

"$TG_PY" -m pytest "$@"

if [ -z "${TG_SKIP_NOTEBOOKS:-}" ]; then
  out=$(mktemp -d -t tg-smoke-XXXXXX)
  trap 'rm -rf "$out"' EXIT
  echo "== smoke profile of every notebook into $out"
  "$TG_PY" -m tg_utils.runner --kernel "$TG_KERNEL" --profile smoke --out "$out"
fi
