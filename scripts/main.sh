#!/usr/bin/env bash
# The main job on its built-in default: sets up the environment, then runs `structmat` on it.
# Extra arguments are passed on, e.g. `bash scripts/main.sh --help`.
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS="${EXTRAS:-test,baselines}" bash scripts/setup.sh
exec "${STRUCTMAT_VENV:-.venv}/bin/structmat" "${@:-report}"
