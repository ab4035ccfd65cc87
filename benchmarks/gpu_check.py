"""The GPU check of issue #29 in one command: CUDA tests, fits on CUDA against torch.linalg.svd,
the layer benchmark on CUDA (float32 and bfloat16, Triton and PyTorch paths), peak memory.

    bash benchmarks/gpu_check.sh               # on a CUDA machine: at most TOTAL_BUDGET_S (7.5 min)
    bash benchmarks/gpu_check.sh --dry-run     # tiny sizes on CPU, no Triton: CI runs this

Each step runs in its own process under its own time budget (``steps()``; cut to what is left of
the total), so one slow step cannot eat the others'; a step over its budget is stopped and
reported, and the next one starts. Results go to ``benchmarks/results/`` (``--out-dir``) with
the device's name in the file names, written as each step ends (bench_fit also after each
row): ``gpu_check_<device>.{md,json}`` (what ran, status, seconds),
``bench_fit_cuda_<device>.*`` and ``bench_fit_cuda_<device>_8192.*`` (time against one
``torch.linalg.svd``, error ratio to the optimum and ``torch.cuda.max_memory_allocated`` of every
fit), ``bench_layer_cuda_<device>_<dtype>_<path>.*`` (MoRe vs PEFT's LoRA, memory from
``max_memory_allocated``; ``<path>``: ``torch`` or ``triton``, forced with
``STRUCTMAT_MONARCH_BACKEND``), ``pytest_cuda_<device>.txt``. The dry run writes the same with
``cpu`` and ``cpu-dry-run`` in the names.
Nothing is downloaded: the matrices are synthetic (the real-weight rows are a CPU table).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field

import torch

BENCH = pathlib.Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))
from _timing import environment  # noqa: E402

TOTAL_BUDGET_S = 450  # the whole check, under the 8 minutes with room for start-up
DRY_RUN_BUDGET_S = 600  # per step of --dry-run: a loaded CI machine, where only the plumbing is checked
LAYER_ROWS = ["--shape", "768x768", "--shape", "768x3072", "--shape", "4096x4096", "--shape", "4096x11008"]
LAYER_ROWS += ["--tokens", "512", "--tokens", "4096", "--rank", "1", "--rank", "4", "--rank", "8"]


@dataclass
class Step:
    """One process of the check: ``argv`` run from the repository root within ``budget_s``."""

    name: str
    argv: list[str]
    budget_s: float
    env: dict[str, str] = field(default_factory=dict)
    log: str | None = None  # file (in the results folder) that gets the full output


def device_slug() -> str:
    """``nvidia-h200`` from ``NVIDIA H200``: the device's name as a file-name part."""
    return re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name().lower()).strip("-")


def steps(out: pathlib.Path, dev: str, dry: bool) -> list[Step]:
    """The check's steps; ``dry``: the same plumbing at tiny sizes on CPU, without Triton."""
    py = sys.executable
    kind = "cpu" if dry else "cuda"
    pytest = [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", "-k", "cuda"]
    if dry:
        tests = [*pytest, "tests/test_fits.py"]
        fits = [[py, "benchmarks/bench_fit.py", "--quick", "--no-memory"]]
        fit_budgets = [85]
        layer = ["--quick", "--device", "cpu", "--shape", "64x96", "--tokens", "32", "--rank", "2"]
        paths = {"torch": "torch"}
    else:
        tests = [*pytest, "tests/test_fits.py", "tests/butterfly/test_fit.py", "tests/monarch/test_paths.py"]
        fit = [py, "benchmarks/bench_fit.py", "--device", "cuda", "--no-real", "--min-seconds", "0"]
        fits = [
            [*fit, "--sizes", "1024", "2048", "4096", "--ranks", "4", "8", "--rounds", "3"],
            # 8192: one matrix and round, no batched SVD of 2048-blocks nor low rank (full SVDs)
            [*fit, "--sizes", "8192", "--ranks", "4", "--matrices", "gaussian", "--methods", "gram", "randomized"]
            + ["--rounds", "1", "--no-lowrank"],
        ]
        fit_budgets = [85, 50]
        layer = ["--quick", "--device", "cuda", *LAYER_ROWS]
        paths = {"torch": "torch", "triton": "triton"}
    for i, argv in enumerate(fits):
        argv += ["--out", str(out / f"bench_fit_{kind}_{dev}{'_8192' if i else ''}.json")]
    # budgets (s) on an H100/H200, 410 in all: the hypothesis test of the Triton kernel compiles
    # for each drawn shape; the 8192 fit is three full SVDs (warm-up, timed, the optimum's values);
    # the Triton layer runs compile a kernel per shape and rank
    found = [Step("CUDA tests (pytest -k cuda)", tests, 85, log=f"pytest_{kind}_{dev}.txt")]
    found += [Step(f"fits on {kind} ({i + 1}/{len(fits)})", argv, fit_budgets[i]) for i, argv in enumerate(fits)]
    for dtype in ("float32", "bfloat16"):
        for path, backend in paths.items():
            name = f"bench_layer_{kind}_{dev}_{dtype}_{path}.json"
            argv = [py, "benchmarks/bench_layer.py", *layer, "--dtype", dtype, "--out", str(out / name)]
            budget = 60 if path == "triton" else 35
            found.append(Step(f"layer {dtype} {path}", argv, budget, {"STRUCTMAT_MONARCH_BACKEND": backend}))
    return found


def run_step(step: Step, out: pathlib.Path, budget_s: float) -> dict:
    """Run one step; its status, seconds and output tail (the full output to ``step.log``)."""
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])} | step.env
    env["PYTHONUNBUFFERED"] = "1"
    t0 = time.monotonic()
    try:
        done = subprocess.run(step.argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=budget_s)
        status = "ok" if done.returncode == 0 else f"failed (exit {done.returncode})"
        output = done.stdout + done.stderr
    except subprocess.TimeoutExpired as stopped:
        status = f"stopped at its budget of {budget_s:.0f} s"
        output = "".join(b.decode() if isinstance(b, bytes) else (b or "") for b in (stopped.stdout, stopped.stderr))
    seconds = time.monotonic() - t0
    if step.log:
        (out / step.log).write_text(output)
    print(f"[{status}] {step.name}: {seconds:.0f} s", flush=True)
    result = {"step": step.name, "status": status, "seconds": seconds, "budget_s": budget_s, "env": step.env}
    return result | {"command": " ".join(step.argv), "output_tail": output[-1500:]}


def summary(results: list[dict], dev: str, dry: bool, total: float) -> str:
    lines = [
        f"GPU check{' (dry run: CPU, tiny sizes, no Triton)' if dry else ''}: `bash benchmarks/gpu_check.sh"
        f"{' --dry-run' if dry else ''}`  ",
        f"Environment: {environment()}  ",
        f"Device in file names: {dev}; total {total:.0f} s of a {TOTAL_BUDGET_S} s budget  ",
        "Baselines, in each step's own table: torch.linalg.svd(W) for the fits, PEFT's LoRA layer for the layer.",
        "",
        "| step | status | seconds (budget) | command |",
        "|---|---|---|---|",
    ]
    for r in results:
        env = " ".join(f"{k}={v}" for k, v in r["env"].items())
        command = f"{env} {r['command']}".strip().replace(str(REPO) + "/", "").replace(sys.executable, "python")
        lines.append(f"| {r['step']} | {r['status']} | {r['seconds']:.0f} ({r['budget_s']:.0f}) | `{command}` |")
    failed = [r for r in results if r["status"] != "ok"]
    for r in failed:
        lines += ["", f"### {r['step']}: {r['status']}", "", "```", r["output_tail"].strip(), "```"]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="tiny sizes on CPU, no Triton (what CI runs)")
    ap.add_argument("--out-dir", default=str(BENCH / "results"))
    args = ap.parse_args()
    if not args.dry_run and not torch.cuda.is_available():
        ap.error("no CUDA device here: run with --dry-run for the CPU rehearsal")
    dev = "cpu-dry-run" if args.dry_run else device_slug()
    out = pathlib.Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    print(environment(), flush=True)
    start, results = time.monotonic(), []
    for step in steps(out, dev, args.dry_run):
        left = TOTAL_BUDGET_S - (time.monotonic() - start)
        if left < 5 and not args.dry_run:
            results.append({"step": step.name, "status": "not run: total budget spent", "seconds": 0.0})
            results[-1] |= {"budget_s": 0.0, "env": step.env, "command": " ".join(step.argv), "output_tail": ""}
            continue
        results.append(run_step(step, out, DRY_RUN_BUDGET_S if args.dry_run else min(step.budget_s, left)))
        total = time.monotonic() - start
        (out / f"gpu_check_{dev}.md").write_text(summary(results, dev, args.dry_run, total))
        (out / f"gpu_check_{dev}.json").write_text(json.dumps({"env": environment(), "steps": results}, indent=1))
    print(f"total {time.monotonic() - start:.0f} s; summary: {out / f'gpu_check_{dev}.md'}")
    sys.exit(0 if all(r["status"] == "ok" for r in results) else 1)


if __name__ == "__main__":
    main()
