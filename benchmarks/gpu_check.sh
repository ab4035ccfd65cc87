#!/usr/bin/env bash
# The GPU check of issue #29 (benchmarks/gpu_check.py): CUDA tests, fits and layer benchmark on
# CUDA, peak memory; results in benchmarks/results/ named after the device. Under 8 minutes on an
# H100/H200; --dry-run rehearses it on CPU at tiny sizes (CI runs that).
#   bash benchmarks/gpu_check.sh [--dry-run] [--out-dir DIR]
# PYTHON picks the interpreter (default: python3, the one that has torch on the device machines).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python3}" benchmarks/gpu_check.py "$@"
