#!/usr/bin/env bash
# The whole test suite: sets up the environment (test + baseline extras, optional data
# packages the tests use), then runs pytest on 2 workers. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
PY="${STRUCTMAT_VENV:-.venv}/bin/python"
"$PY" -m ruff check .
exec "$PY" -m pytest -n "${PYTEST_WORKERS:-2}" "$@"
