"""Timing helpers shared by the benchmarks (wall clock, CUDA-synchronised, best of N, interleaved)."""

from __future__ import annotations

import json
import pathlib
import time
from collections.abc import Callable

import torch


def sync(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def best_time(fn: Callable[[], object], device: torch.device | str = "cpu", repeats: int = 3) -> float:
    """Best wall-clock seconds of ``repeats`` calls after one warm-up call."""
    return best_times({"fn": fn}, device, repeats)["fn"]


def best_times(fns: dict[str, Callable[[], object]], device: torch.device | str = "cpu", rounds: int = 5) -> dict:
    """Best wall-clock seconds of each of ``fns`` over ``rounds`` rounds, the cases interleaved
    (one call of each per round, after one warm-up call each), so that a slow stretch of the
    machine hits every case alike instead of whichever happened to run then."""
    for fn in fns.values():
        fn()
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(rounds):
        for name, fn in fns.items():
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


def environment() -> str:
    threads = torch.get_num_threads()
    dev = torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA"
    return f"torch {torch.__version__}, {threads} CPU threads, {dev}"


def write_results(out: str | pathlib.Path, rows: list[dict], command: str, table: str) -> None:
    """``out`` (.json) with the environment and rows, and beside it (.md) the command and table."""
    out = pathlib.Path(out)
    out.with_suffix(".json").write_text(json.dumps({"env": environment(), "rows": rows}, indent=1))
    out.with_suffix(".md").write_text(f"Command: `{command}`  \nEnvironment: {environment()}\n\n{table}\n")
