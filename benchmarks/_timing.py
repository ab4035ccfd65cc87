"""Timing helpers shared by the benchmarks (wall clock, CUDA-synchronised, best of N, interleaved),
and the header every results table carries (command, machine, threads, baseline)."""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import pathlib
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable

import torch


def sync(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def best_time(fn: Callable[[], object], device: torch.device | str = "cpu", repeats: int = 3) -> float:
    """Best wall-clock seconds of ``repeats`` calls after one warm-up call."""
    return best_times({"fn": fn}, device, repeats)["fn"]


def best_times(
    fns: dict[str, Callable[[], object]],
    device: torch.device | str = "cpu",
    rounds: int = 5,
    min_seconds: float = 0.0,
    max_rounds: int = 50,
) -> dict:
    """Best wall-clock seconds of each of ``fns`` over :func:`interleaved_rounds`."""
    return {name: min(ts) for name, ts in interleaved_rounds(fns, device, rounds, min_seconds, max_rounds).items()}


def interleaved_rounds(
    fns: dict[str, Callable[[], object]],
    device: torch.device | str = "cpu",
    rounds: int = 5,
    min_seconds: float = 0.0,
    max_rounds: int = 50,
) -> dict[str, list[float]]:
    """Wall-clock seconds of each of ``fns`` in each of at least ``rounds`` rounds, the cases
    interleaved (one call of each per round, after one warm-up call each, the order reversed
    every other round), so that a slow stretch of the machine hits every case alike instead of
    whichever happened to run then. Rounds continue, up to ``max_rounds``, until the slowest
    case has run ``min_seconds`` in all: short cases get more samples, whose minimum is then
    less noisy, while long ones are not repeated beyond ``rounds``."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    done = 0
    while done < rounds or (done < max_rounds and max(sum(ts) for ts in times.values()) < min_seconds):
        for name in names if done % 2 == 0 else reversed(names):
            sync(device)
            t0 = time.perf_counter()
            fns[name]()
            sync(device)
            times[name].append(time.perf_counter() - t0)
        done += 1
    return times


def median_ratio(a: list[float], b: list[float]) -> float:
    """Median over rounds of ``a[i] / b[i]``: the two cases ran back to back in each round, so a
    slow stretch of a shared machine (steal time, a neighbour's load) divides out."""
    return statistics.median(x / y for x, y in zip(a, b, strict=True))


_ALLOCATOR = "system default"


def quiet_allocator() -> str:
    """Keep freed memory in the process (glibc ``mallopt``: no mmap, no trimming).

    By default glibc gives every allocation of more than 32 MB (and, after trimming, smaller
    ones too) fresh pages from the kernel, which zeroes them on first touch: on this 2-core
    machine that was a third to a half of the CPU time of a (4096, 3072) forward+backward, and
    its run-to-run spread was the +-30% noise of earlier runs. This is what a caching allocator
    (PyTorch's own on CUDA, jemalloc/tcmalloc on CPU) does anyway; it applies to every case alike.
    Returns a description for the results (unchanged elsewhere than Linux/glibc)."""
    global _ALLOCATOR
    if not sys.platform.startswith("linux"):
        return _ALLOCATOR
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        m_trim_threshold, m_mmap_max = -1, -4
        ok = libc.mallopt(m_mmap_max, 0) == 1 and libc.mallopt(m_trim_threshold, 2**30) == 1
    except (OSError, AttributeError):
        ok = False
    if ok:
        _ALLOCATOR = "glibc, mmap off, trim threshold 1 GiB"
    return _ALLOCATOR


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else ``platform.processor()``)."""
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def machine() -> str:
    """The machine a result comes from: CPU model and logical cores, and the GPU (or none)."""
    cpu = f"CPU {cpu_model()} ({os.cpu_count()} logical cores)"
    if not torch.cuda.is_available():
        return f"{cpu}, no CUDA GPU"
    return f"{cpu}, GPU {torch.cuda.get_device_name()} (CUDA {torch.version.cuda}, {torch.cuda.device_count()} visible)"


def environment() -> str:
    """Machine, torch version and thread count, and the CPU allocator (last)."""
    threads = torch.get_num_threads()
    forced = os.environ.get("STRUCTMAT_MONARCH_BACKEND")
    backend = f"; Monarch backend forced: STRUCTMAT_MONARCH_BACKEND={forced}" if forced else ""
    return f"{machine()}; torch {torch.__version__}, {threads} CPU threads{backend}; CPU allocator: {_ALLOCATOR}"


def command_line() -> str:
    """The command that is running, as typed from the repository root (``python benchmarks/x.py --a b``)."""
    script = pathlib.Path(sys.argv[0]).resolve()
    root = pathlib.Path(__file__).resolve().parent.parent
    shown = script.relative_to(root) if script.is_relative_to(root) else script
    return shlex.join(["python", str(shown), *sys.argv[1:]])


def header(command: str, baseline: str) -> str:
    """What every results table states above it: the command, the machine with its threads, and the
    baseline its ratios are against, measured in the same run (markdown, lines ending in two spaces)."""
    return f"Command: `{command}`  \nEnvironment: {environment()}  \nBaseline (measured in the same run): {baseline}\n"


def write_results(
    out: str | pathlib.Path, rows: list[dict], command: str, table: str, baseline: str, **extra: object
) -> None:
    """``out`` (.json) with the environment, baseline, ``extra`` and rows, and beside it (.md) the
    :func:`header` and table."""
    out = pathlib.Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"env": environment(), "command": command, "baseline": baseline, **extra, "rows": rows}
    out.with_suffix(".json").write_text(json.dumps(meta, indent=1))
    out.with_suffix(".md").write_text(f"{header(command, baseline)}\n{table}\n")
