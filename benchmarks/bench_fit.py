"""Time, error and peak memory of fit_monarch / fit_lowrank against one reduced SVD of the same W.

    python benchmarks/bench_fit.py                  # CPU: Gaussian and low rank + noise at 1024, 2048,
                                                    # 4096, and MiniLM / SmolLM2 layers (the committed table)
    python benchmarks/bench_fit.py --quick          # tiny, for the smoke test
    python benchmarks/bench_fit.py --device cuda --sizes 1024 2048 4096 8192 --rounds 3 --no-real

For each matrix: the baseline ``torch.linalg.svd(W, full_matrices=False)``; ``fit_monarch(W, 4,
rank, method=m)`` for each rank (``--ranks``) and method (``svd``, ``gram``, ``randomized``); and
``fit_lowrank(W, 8)`` by SVD and randomized. All cases of a matrix are timed in the same run,
interleaved (``_timing.interleaved_rounds``: one call of each per round after a warm-up, at
least ``--rounds`` rounds, more, up to 50, until the slowest case has run ``--min-seconds``).
Time: the median over rounds; ``x SVD``: the median over rounds of the case's time over the
baseline's in the same round (a slow stretch of a shared machine divides out).
Error: ``fit_error / optimal_error`` (the optimum from singular values, computed once, untimed;
``fit_error`` is measured on the returned factors). ``auto`` marks the method ``method="auto"``
takes for that matrix and rank (its ``fit_info``).
Peak memory (``_memory.py``): on CPU the peak RSS increase of one call in a fresh process per
case (every allocation counted, LAPACK's workspaces too; matrices of ``--memory-min-size`` and
more), on CUDA the ``max_memory_allocated`` increase of the warm-up call (not timed); in MiB
and as a multiple of W's bytes.
Results: ``--out`` (.json) and the table beside it (.md), rewritten after each row so that a
run stopped early keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
from collections.abc import Callable

import torch

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from _memory import cpu_peak_bytes, cuda_peak_bytes, return_freed_memory  # noqa: E402
from _timing import (  # noqa: E402
    command_line,
    environment,
    interleaved_rounds,
    median_ratio,
    quiet_allocator,
    write_results,
)

from structmat import fit_lowrank, fit_monarch, optimal_error  # noqa: E402

NBLOCKS = 4
LOWRANK_RANK = 8
BASELINE = "torch.linalg.svd(W)"
SMOLLM2_LAYERS = {  # a spread of shapes and depths
    "model.layers.0.self_attn.q_proj.weight": "SmolLM2 L0 q_proj",
    "model.layers.0.mlp.gate_proj.weight": "SmolLM2 L0 gate_proj",
    "model.layers.15.mlp.down_proj.weight": "SmolLM2 L15 down_proj",
    "model.layers.29.self_attn.o_proj.weight": "SmolLM2 L29 o_proj",
}


# -- matrices ------------------------------------------------------------------------------------


def synthetic(kind: str, n: int) -> torch.Tensor:
    """``(n, n)`` float32: ``gaussian`` (a flat spectrum, the range finder's hardest case) or
    ``lowrank-noise`` (rank 32 with unit-variance entries plus 10% Gaussian noise)."""
    g = torch.Generator().manual_seed(0)
    if kind == "gaussian":
        return torch.randn(n, n, generator=g)
    if kind == "lowrank-noise":
        U, V = torch.randn(n, 32, generator=g), torch.randn(32, n, generator=g)
        return U @ V / 32**0.5 + 0.1 * torch.randn(n, n, generator=g)
    raise ValueError(f"matrix kind must be 'gaussian' or 'lowrank-noise', got {kind!r}")


def real_matrices() -> dict[str, torch.Tensor]:
    """Name -> float32 weight of MiniLM (layer 0) and SmolLM2 (SMOLLM2_LAYERS), those that are
    installed and cached (nothing is downloaded: SmolLM2 is read only if already converted)."""
    from structmat.experiments.models import minilm_weight_matrices

    mats = {name: W.float() for name, W in minilm_weight_matrices().items()}
    try:
        from safetensors import safe_open

        from structmat.experiments.cache import cache_dir

        path = os.path.join(cache_dir("smollm2-135m-instruct-q4_1-f32"), "model.safetensors")
        with safe_open(path, "pt") as f:
            for key, name in SMOLLM2_LAYERS.items():
                W = f.get_tensor(key).float()
                mats[f"{name} ({W.shape[0]}x{W.shape[1]})"] = W
    except (ModuleNotFoundError, FileNotFoundError, OSError) as err:
        print(f"SmolLM2 layers left out ({type(err).__name__}: {err}); `structmat.experiments.models.smollm2_path()`")
    return mats


def matrix(spec: dict) -> torch.Tensor:
    """The matrix of a case spec (rebuilt the same in a memory subprocess)."""
    if spec["kind"] == "real":
        return real_matrices()[spec["name"]]
    return synthetic(spec["kind"], spec["n"])


# -- cases ---------------------------------------------------------------------------------------


def case_fn(case: dict, W: torch.Tensor) -> Callable[[], object]:
    """The call a case times: ``{"fit": "svd"}``, ``{"fit": "monarch", "rank": r, "method": m}``
    or ``{"fit": "lowrank", "rank": r, "method": m}``."""
    if case["fit"] == "svd":
        return lambda: torch.linalg.svd(W, full_matrices=False)
    if case["fit"] == "monarch":
        return lambda: fit_monarch(W, NBLOCKS, case["rank"], method=case["method"])
    return lambda: fit_lowrank(W, case["rank"], method=case["method"])


def case_name(case: dict) -> str:
    if case["fit"] == "svd":
        return BASELINE
    if case["fit"] == "monarch":
        return f"fit_monarch(nblocks={NBLOCKS}, rank={case['rank']}, {case['method']})"
    return f"fit_lowrank(rank={case['rank']}, {case['method']})"


def cases(ranks: list[int], methods: list[str], W: torch.Tensor, lowrank: bool = True) -> list[dict]:
    out_f, in_f = W.shape
    useful = [r for r in ranks if r <= min(out_f, in_f)]
    found = [{"fit": "svd"}]
    found += [{"fit": "monarch", "rank": r, "method": m} for r in useful for m in methods]
    if lowrank and LOWRANK_RANK <= min(out_f, in_f):
        found += [{"fit": "lowrank", "rank": LOWRANK_RANK, "method": m} for m in ("svd", "randomized")]
    return found


# -- memory --------------------------------------------------------------------------------------


def memory_case(payload: str) -> None:
    """In a fresh process: warm up on a tiny matrix, then one measured call (``_memory``)."""
    spec = json.loads(payload)
    return_freed_memory()
    case = spec["case"]
    tiny = torch.randn(64, 64, generator=torch.Generator().manual_seed(1))
    case_fn(case, tiny)()
    W = matrix(spec["matrix"])
    peak, how = cpu_peak_bytes(case_fn(case, W))
    print("MEMORY " + json.dumps({"bytes": peak, "how": how}))


def memory_in_subprocess(matrix_spec: dict, case: dict) -> tuple[int, str]:
    payload = json.dumps({"matrix": matrix_spec, "case": case})
    out = subprocess.run(
        [sys.executable, __file__, "--memory-case", payload], capture_output=True, text=True, timeout=3600
    )
    lines = [line for line in out.stdout.splitlines() if line.startswith("MEMORY ")]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"memory subprocess for {case_name(case)} failed:\n{out.stderr[-2000:]}")
    result = json.loads(lines[-1][len("MEMORY ") :])
    return result["bytes"], result["how"]


# -- the run -------------------------------------------------------------------------------------


def run_matrix(
    name: str, spec: dict, W: torch.Tensor, device: str, args: argparse.Namespace, flush: Callable[[list[dict]], None]
) -> list[dict]:
    """Every case of one matrix: timed together, then errors and (CPU) memory; ``flush(rows)``
    after each row, so that a run stopped early keeps its finished rows."""
    W = W.to(device)
    todo = cases(args.ranks, args.methods, W, args.lowrank)
    measure_memory = args.memory and min(W.shape) >= args.memory_min_size
    last: dict[str, object] = {}
    cuda_peaks: dict[str, tuple[int, str]] = {}

    def timed(case: dict) -> Callable[[], None]:
        fn, key = case_fn(case, W), case_name(case)

        def call() -> None:
            if device == "cuda" and measure_memory and key not in cuda_peaks:  # the warm-up call
                cuda_peaks[key] = cuda_peak_bytes(fn, device)
                return
            result = fn()
            if case["fit"] != "svd":  # the fitted module is small; the SVD's factors are not kept
                last[key] = result

        return call

    times = interleaved_rounds({case_name(c): timed(c) for c in todo}, device, args.rounds, args.min_seconds)
    base = times[BASELINE]
    optimum, auto = {}, {}
    for fit, r in {(c["fit"], c["rank"]) for c in todo if c["fit"] != "svd"}:
        if fit == "monarch":
            optimum[(fit, r)] = float(optimal_error(W, "monarch", nblocks=NBLOCKS, rank=r))
            auto[(fit, r)] = fit_monarch(W, NBLOCKS, r).fit_info["method"]
        else:
            optimum[(fit, r)] = float(optimal_error(W, "lowrank", rank=r))
            auto[(fit, r)] = fit_lowrank(W, r, method="auto").fit_info["method"]
    rows: list[dict] = []
    for case in todo:
        key = case_name(case)
        row = {"device": device, "matrix": name, "shape": list(W.shape), "case": key} | case
        row |= {"seconds": statistics.median(times[key]), "rounds": len(times[key])}
        row["x_svd"] = median_ratio(times[key], base)
        if case["fit"] != "svd":
            err = float(last[key].fit_error)
            opt = optimum[(case["fit"], case["rank"])]
            row |= {"fit_error": err, "optimal_error": opt, "error_ratio": err / opt if opt > 0 else float("nan")}
            row["auto"] = auto[(case["fit"], case["rank"])] == case["method"]
        if measure_memory:
            peak, how = cuda_peaks[key] if device == "cuda" else memory_in_subprocess(spec, case)
            row |= {"peak_bytes": peak, "peak_x_W": peak / (W.numel() * W.element_size()), "memory": how}
        rows.append(row)
        flush(rows)
        print(describe(row), flush=True)
    return rows


def describe(row: dict) -> str:
    text = f"  {row['case']:48s} {row['seconds']:9.4f} s  x{row['x_svd']:.4f} SVD"
    if "error_ratio" in row:
        text += f"  error {row['error_ratio']:.6f}x optimum{' (auto)' if row['auto'] else ''}"
    if "peak_bytes" in row:
        text += f"  peak +{row['peak_bytes'] / 2**20:.0f} MiB ({row['peak_x_W']:.2f}x W)"
    return text


def table(rows: list[dict]) -> str:
    lines = [
        "| device | matrix (out x in) | fit | seconds (median) | x SVD (median of rounds) | error / optimum |"
        " peak memory, MiB (x W) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        err = f"{r['error_ratio']:.6f}" if "error_ratio" in r else "(baseline)"
        fit = r["case"] + (" **auto**" if r.get("auto") else "")
        mem = f"{r['peak_bytes'] / 2**20:.0f} ({r['peak_x_W']:.2f}x)" if "peak_bytes" in r else "-"
        shape = f"{r['shape'][0]}x{r['shape'][1]}"
        lines.append(
            f"| {r['device']} | {r['matrix']} ({shape}) | {fit} | {r['seconds']:.4f} | {r['x_svd']:.4f} | {err} |"
            f" {mem} |"
        )
    return "\n".join(lines)


def notes(rows: list[dict], args: argparse.Namespace) -> str:
    how = sorted({r["memory"] for r in rows if "memory" in r})
    return (
        f"Rounds: at least {args.rounds}, interleaved, more until the slowest case ran {args.min_seconds} s "
        f'(counts in the JSON). **auto**: the method `method="auto"` takes there. Memory: '
        + ("; ".join(how) if how else "not measured")
        + f" (matrices of {args.memory_min_size} and more on CPU)."
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 4096])
    ap.add_argument("--ranks", type=int, nargs="+", default=[1, 4, 8], help="fit_monarch block ranks (nblocks 4)")
    ap.add_argument("--methods", nargs="+", default=["svd", "gram", "randomized"], help="fit_monarch methods")
    ap.add_argument("--matrices", nargs="+", default=["gaussian", "lowrank-noise"])
    ap.add_argument("--no-real", action="store_true", help="leave out the MiniLM and SmolLM2 layers")
    ap.add_argument("--no-lowrank", dest="lowrank", action="store_false", help="leave out fit_lowrank")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--min-seconds", type=float, default=2.0)
    ap.add_argument("--no-memory", dest="memory", action="store_false")
    ap.add_argument("--memory-min-size", type=int, default=1024, help="CPU: measure memory from this size on")
    ap.add_argument("--system-malloc", action="store_true", help="leave glibc's allocator settings as they are")
    ap.add_argument("--quick", action="store_true", help="64x64, rank 4, one round: the smoke test")
    ap.add_argument("--memory-case", help=argparse.SUPPRESS)
    ap.add_argument("--out", default=str(pathlib.Path(__file__).parent / "results" / "bench_fit.json"))
    args = ap.parse_args()
    if args.memory_case:
        memory_case(args.memory_case)
        return
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device here (torch.cuda.is_available() is False)")
    if args.quick:
        args.sizes, args.ranks, args.matrices, args.rounds, args.min_seconds = [64], [4], ["gaussian"], 1, 0.0
        args.no_real, args.memory_min_size = True, 64
    if not args.system_malloc:
        quiet_allocator()
    print(environment())
    todo = [(f"{kind} {n}", {"kind": kind, "n": n}, None) for n in args.sizes for kind in args.matrices]
    if not args.no_real:
        todo += [(name, {"kind": "real", "name": name}, W) for name, W in real_matrices().items()]
    rows: list[dict] = []
    baseline = f"{BASELINE} (reduced: full_matrices=False) of the same W; ratios 'x SVD' are against it"

    def flush(new: list[dict]) -> None:
        done = rows + new
        write_results(args.out, done, command_line(), table(done) + "\n\n" + notes(done, args), baseline)

    for name, spec, W in todo:
        print(f"\n[{args.device}] {name}", flush=True)
        rows += run_matrix(name, spec, W if W is not None else matrix(spec), args.device, args, flush)
    randomized = [r for r in rows if r.get("method") == "randomized"]
    if randomized:
        worst = max(randomized, key=lambda r: r["error_ratio"])
        print(f"\nworst randomized error ratio {worst['error_ratio']:.6f} ({worst['matrix']}, {worst['case']})")


if __name__ == "__main__":
    main()
