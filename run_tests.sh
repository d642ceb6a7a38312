#!/usr/bin/env bash
# The test suite: pytest over tests/, then the smoke profile of every notebook into a temporary
# output folder (so every notebook is executed), then the rehearsal profile (the paper profile's code
# paths with tiny stand-in hub models, offline; a few minutes), then the browser test (notebook 03 in
# JupyterLab in headless Chromium, on the smoke run's inputs; skipped, with a line saying so, where
# /usr/bin/chromium is missing). Extra arguments go to the first pytest.
#   bash run_tests.sh [pytest args]        TG_SKIP_NOTEBOOKS=1 skips the notebook runs and the browser test
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
source ./setup_env.sh

"$TG_PY" -m pytest -m "not browser" "$@"

if [ -z "${TG_SKIP_NOTEBOOKS:-}" ]; then
  out=$(mktemp -d -t tg-smoke-XXXXXX)
  trap 'rm -rf "$out"' EXIT
  echo "== smoke profile of every notebook into $out"
  "$TG_PY" -m tg_utils.runner --kernel "$TG_KERNEL" --profile smoke --out "$out/smoke"
  echo "== rehearsal profile of every notebook into $out/rehearsal"
  "$TG_PY" -m tg_utils.runner --kernel "$TG_KERNEL" --profile rehearsal --out "$out/rehearsal"
  if [ -x "${TG_CHROMIUM:-/usr/bin/chromium}" ]; then
    echo "== browser test: notebook 03 in JupyterLab in headless Chromium (screenshots: outputs/browser-test/)"
  else
    echo "== browser test SKIPPED: no Chromium at ${TG_CHROMIUM:-/usr/bin/chromium} (Debian: apt-get install chromium)"
  fi
  TG_BROWSER_INPUTS="$out/smoke" "$TG_PY" -m pytest -m browser -rs tests/test_browser.py
else
  echo "== notebook runs and browser test skipped (TG_SKIP_NOTEBOOKS is set)"
fi
