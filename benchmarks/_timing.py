"""Timing helpers shared by the benchmarks (wall clock, CUDA-synchronised, best of N)."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch


def sync(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def best_time(fn: Callable[[], object], device: torch.device | str = "cpu", repeats: int = 3) -> float:
    """Best wall-clock seconds of ``repeats`` calls after one warm-up call."""
    fn()
    sync(device)
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def environment() -> str:
    threads = torch.get_num_threads()
    dev = torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA"
    return f"torch {torch.__version__}, {threads} CPU threads, {dev}"
