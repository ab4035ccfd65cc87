"""Time of fit_monarch / fit_lowrank against one full torch.linalg.svd of the same W.

    python benchmarks/bench_fit.py                 # n in 512 1024 2048 4096, CPU (+ CUDA if present)
    python benchmarks/bench_fit.py --sizes 512 1024 --repeats 3

Prints, per size, the seconds of the full SVD (the baseline, measured in the same run) and of
each fit, with the ratio fit / SVD. Results also go to benchmarks/results/bench_fit.json.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

import torch

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from _timing import best_time, environment  # noqa: E402

from structmat import fit_lowrank, fit_monarch  # noqa: E402


def run(device: str, sizes: list[int], repeats: int) -> list[dict]:
    rows = []
    for n in sizes:
        torch.manual_seed(0)
        W = torch.randn(n, n, device=device)
        reps = 1 if n >= 4096 and device == "cpu" else repeats
        t_svd = best_time(lambda W=W: torch.linalg.svd(W, full_matrices=False), device, reps)
        cases = {f"fit_monarch(nblocks=4, rank={r})": (lambda W=W, r=r: fit_monarch(W, 4, r)) for r in (1, 4, 8)}
        cases["fit_lowrank(rank=16, svd)"] = lambda W=W: fit_lowrank(W, 16)
        cases["fit_lowrank(rank=16, randomized)"] = lambda W=W: fit_lowrank(W, 16, method="randomized")
        print(f"\n[{device}] n={n}: torch.linalg.svd(W) {t_svd:.3f} s (baseline)")
        print(f"  {'fit':38s} {'seconds':>9s} {'x SVD':>7s} {'rel. error':>11s}")
        for name, fn in cases.items():
            t = best_time(fn, device, reps)
            err = fn().fit_error.item()
            rows.append(
                {
                    "device": device,
                    "n": n,
                    "fit": name,
                    "seconds": t,
                    "svd_seconds": t_svd,
                    "ratio": t / t_svd,
                    "rel_error": err,
                }
            )
            print(f"  {name:38s} {t:9.3f} {t / t_svd:7.3f} {err:11.4f}", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048, 4096])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(pathlib.Path(__file__).parent / "results" / "bench_fit.json"))
    args = ap.parse_args()
    print(environment())
    rows = run("cpu", args.sizes, args.repeats)
    if torch.cuda.is_available():
        rows += run("cuda", args.sizes, args.repeats)
    pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(args.out).write_text(json.dumps({"env": environment(), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
