"""Which transforms ``fit_butterfly`` recovers from their dense matrices, in what time.

    python benchmarks/bench_butterfly.py                    # n = 64 and 256 on CPU (+ 1024 on CUDA)
    python benchmarks/bench_butterfly.py --sizes 64 --no-baseline
    python benchmarks/bench_butterfly.py --device cuda --sizes 1024
    python benchmarks/bench_butterfly.py --relaxation   # Dao et al.'s relaxation alone, n = 8, 16, 32

For each target (DFT, DCT-II, a circulant convolution, Walsh-Hadamard, a Gaussian matrix) and
size: wall time of ``fit_butterfly(W)`` with its defaults (one run; the fit is deterministic),
the relative Frobenius error measured here from the dense matrices, whether ``fit_info`` says
recovered, the structure found and the steps taken. The baseline, measured in the same run, is
the fit with the structure fixed as before permutations were learnable (``learn_perm=False``:
one butterfly, gradient only) with the same step budgets. Results go to
``benchmarks/results/bench_butterfly.{json,md}``.

``--relaxation`` instead fits small transforms with the gradient phase alone and relaxed learned
permutations (``closed_form=False, relax=True``, 8 restarts): the method of Dao et al. (2019)
without its hyperparameter search; results in ``bench_butterfly_relaxation.{json,md}``.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import time

import numpy as np
import scipy.fft
import scipy.linalg
import torch

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from _timing import command_line, environment, sync, write_results  # noqa: E402

from structmat import fit_butterfly  # noqa: E402


def targets(n: int, device: str) -> dict[str, torch.Tensor]:
    rng = np.random.default_rng(0)
    eye = np.eye(n)
    out = {
        "DFT": torch.fft.fft(torch.eye(n, dtype=torch.complex64), dim=0),
        "DCT-II": torch.tensor(scipy.fft.dct(eye, norm="ortho", axis=0), dtype=torch.float32),
        "circulant": torch.tensor(scipy.linalg.circulant(rng.standard_normal(n)), dtype=torch.float32),
        "Hadamard": torch.tensor(scipy.linalg.hadamard(n), dtype=torch.float32),
        "Gaussian": torch.tensor(rng.standard_normal((n, n)), dtype=torch.float32),
    }
    return {k: v.to(device) for k, v in out.items()}


def one(W: torch.Tensor, device: str, **kwargs) -> dict:
    sync(device)
    t0 = time.perf_counter()
    bf = fit_butterfly(W, progress=False, **kwargs)
    sync(device)
    seconds = time.perf_counter() - t0
    err = (torch.linalg.matrix_norm(W - bf.to_dense().detach()) / torch.linalg.matrix_norm(W)).item()
    info = bf.fit_info
    return {
        "seconds": seconds,
        "rel_error": err,
        "recovered": info["recovered"],
        "phase": info["phase"],
        "stopped": info["stopped"],
        "adam_steps": info["adam_steps"],
        "lbfgs_steps": info["lbfgs_steps"],
        "nblocks": bf.nblocks,
        "complex": bf.is_complex,
        "real_output": bf.real_output,
        "params": bf.num_params,
        "tried": [t["structure"] for t in info["tried"]],
    }


def run(device: str, sizes: list[int], baseline: bool, names: list[str] | None) -> list[dict]:
    rows = []
    for n in sizes:
        for name, W in targets(n, device).items():
            if names and name not in names:
                continue
            row = {"device": device, "n": n, "target": name, **one(W, device)}
            if baseline:
                base = one(W, device, learn_perm=False)
                row.update(
                    {f"baseline_{k}": base[k] for k in ("seconds", "rel_error", "adam_steps", "lbfgs_steps", "stopped")}
                )
            rows.append(row)
            kind = "complex" + (" (real output)" if row["real_output"] else "") if row["complex"] else "real"
            text = (
                f"[{device}] n={n:5d} {name:9s} {row['seconds']:7.1f} s  rel.err {row['rel_error']:.1e}  "
                f"recovered={row['recovered']!s:5s} {row['phase']}, nblocks={row['nblocks']} {kind}, "
                f"{row['params']:,d} params, adam {row['adam_steps']} + lbfgs {row['lbfgs_steps']} ({row['stopped']})"
            )
            if baseline:
                text += f" | fixed structure: {row['baseline_seconds']:.1f} s, rel.err {row['baseline_rel_error']:.2f}"
            print(text, flush=True)
    return rows


def table(rows: list[dict], baseline: bool) -> str:
    head = "| device | n | target | seconds | rel. error | recovered | found by | structure | params | steps |"
    sep = "|---|---|---|---|---|---|---|---|---|---|"
    if baseline:
        head += " fixed structure (old fit): seconds | its rel. error |"
        sep += "---|---|"
    lines = [head, sep]
    for r in rows:
        kind = "complex" + (", real output" if r["real_output"] else "") if r["complex"] else "real"
        structure = ("P B P" if r["nblocks"] == 1 else "P B B* P") + f" ({kind})"
        steps = f"{r['adam_steps']} Adam + {r['lbfgs_steps']} L-BFGS ({r['stopped']})"
        line = (
            f"| {r['device']} | {r['n']} | {r['target']} | {r['seconds']:.1f} | {r['rel_error']:.1e} | "
            f"{'yes' if r['recovered'] else '**no**'} | {r['phase']} | {structure} | {r['params']:,d} | {steps} |"
        )
        if baseline:
            line += f" {r['baseline_seconds']:.1f} | {r['baseline_rel_error']:.2f} |"
        lines.append(line)
    return "\n".join(lines)


def relaxation(device: str, sizes: list[int]) -> list[dict]:
    rows = []
    for n in sizes:
        ts = targets(n, device)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(1)).to(device)
        cases = {
            "DFT": (ts["DFT"], 1),
            "DCT-II": (ts["DCT-II"], 2),
            "Hadamard, rows permuted": (ts["Hadamard"][perm], 1),
        }
        for name, (W, nblocks) in cases.items():
            r = one(W, device, closed_form=False, relax=True, restarts=8, nblocks=nblocks)
            rows.append({"device": device, "n": n, "target": name, **r})
            print(f"[{device}] n={n:3d} {name:24s} rel.err {r['rel_error']:.2e} {r['seconds']:.1f} s", flush=True)
    return rows


def relaxation_table(rows: list[dict]) -> str:
    lines = ["| n | target | blocks | rel. error | recovered | seconds | steps |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        steps = f"{r['adam_steps']} Adam + {r['lbfgs_steps']} L-BFGS ({r['stopped']})"
        lines.append(
            f"| {r['n']} | {r['target']} | {r['nblocks']} | {r['rel_error']:.2e} | "
            f"{'yes' if r['recovered'] else 'no'} | {r['seconds']:.1f} | {steps} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=None, help="default: 64 256 (CPU), 1024 (CUDA)")
    ap.add_argument("--device", choices=["cpu", "cuda", "all"], default="all")
    ap.add_argument("--targets", nargs="+", default=None, help="subset of: DFT DCT-II circulant Hadamard Gaussian")
    ap.add_argument("--no-baseline", action="store_true", help="skip the fixed-structure fit")
    ap.add_argument("--relaxation", action="store_true", help="the relaxation alone on small transforms")
    ap.add_argument("--out", default=str(pathlib.Path(__file__).parent / "results" / "bench_butterfly.json"))
    args = ap.parse_args()
    if args.sizes is not None and any(n < 2 or n & (n - 1) for n in args.sizes):
        ap.error("--sizes must be powers of two >= 2")
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device here")
    print(environment(), f"load average {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else "")
    command = command_line()
    if args.relaxation:
        device = "cuda" if args.device == "cuda" else "cpu"
        rows = relaxation(device, args.sizes or [8, 16, 32])
        out = pathlib.Path(args.out)
        out = out.with_name(out.stem + "_relaxation.json") if out.stem == "bench_butterfly" else out
        baseline = "none: errors are absolute, against the dense transform (recovered: fit_info's test)"
        write_results(out, rows, command, relaxation_table(rows), baseline)
        return
    rows = []
    if args.device in ("cpu", "all"):
        rows += run("cpu", args.sizes or [64, 256], not args.no_baseline, args.targets)
    if args.device in ("cuda", "all") and torch.cuda.is_available():
        rows += run("cuda", args.sizes or [1024], not args.no_baseline, args.targets)
    load = f"1-minute load average at the end: {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    baseline = (
        "none (--no-baseline)"
        if args.no_baseline
        else "the fit with the structure fixed (learn_perm=False, same step budgets; its columns on the right)"
    )
    write_results(args.out, rows, command, table(rows, not args.no_baseline) + f"\n\n{load}", baseline)


if __name__ == "__main__":
    main()
