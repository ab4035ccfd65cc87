"""Peak memory of one call, for the benchmarks: the peak resident set size (RSS) increase of a
fresh process on CPU, ``torch.cuda.max_memory_allocated`` on CUDA.

On CPU torch has no caching allocator to ask (its tensors go straight to malloc) and LAPACK's
workspaces, most of an SVD's memory, never pass through torch at all, so counting torch's
allocations would miss them. The RSS counts every page the process touched, whoever allocated it.
To make it count the call and nothing else:

- one call per fresh process (``python bench_x.py --memory-case ...``), after a warm-up of the
  same code on a tiny input (thread pools and BLAS buffers are set up there, not counted);
- freed blocks of 1 MiB or more go back to the kernel (glibc's mmap threshold fixed at 1 MiB:
  by default it rises after the first large free and later blocks come from the heap, where a
  freed block is reused without showing in the RSS or is kept after the call);
- the high-water mark is reset just before the call (``/proc/self/clear_refs``) and the peak is
  ``VmHWM`` after it minus ``VmRSS`` before it: what the call held at once, its result included.

Where ``clear_refs`` cannot be written (not Linux, or a sandbox that refuses it) the lifetime peak
is used instead and the result says so (an upper bound taken over the warm-up too).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import pathlib
import resource
import sys
from collections.abc import Callable

import torch

STATUS = pathlib.Path("/proc/self/status")


def return_freed_memory() -> bool:
    """glibc: every block of 1 MiB or more is its own mapping, unmapped when freed (``M_MMAP_THRESHOLD``
    fixed, which also stops glibc from raising it). False where that is not glibc."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        m_mmap_threshold = -3
        return libc.mallopt(m_mmap_threshold, 1 << 20) == 1
    except (OSError, AttributeError):
        return False


def _status_bytes(key: str) -> int:
    for line in STATUS.read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1]) * 1024  # "VmRSS:   12345 kB"
    raise KeyError(key)


def _reset_peak() -> bool:
    try:
        pathlib.Path("/proc/self/clear_refs").write_text("5")  # 5: reset the peak RSS to the current RSS
        return _status_bytes("VmHWM") <= _status_bytes("VmRSS") + (1 << 20)
    except (OSError, KeyError):
        return False


def cpu_peak_bytes(fn: Callable[[], object]) -> tuple[int, str]:
    """``(bytes, how)``: the RSS increase at the peak of one call of ``fn`` (module docstring)."""
    if _reset_peak():
        before = _status_bytes("VmRSS")
        result = fn()
        peak = _status_bytes("VmHWM") - before
        del result
        return peak, "peak RSS increase (VmHWM reset before the call)"
    usage = resource.getrusage(resource.RUSAGE_SELF)
    before = _status_bytes("VmRSS") if STATUS.exists() else usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    result = fn()
    del result
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    return peak - before, "lifetime peak RSS minus RSS before the call (no VmHWM reset here: an upper bound)"


def cuda_peak_bytes(fn: Callable[[], object], device: torch.device | str) -> tuple[int, str]:
    """``(bytes, how)``: ``max_memory_allocated`` during one call of ``fn`` minus what was allocated
    before (torch's caching allocator sees every tensor; cuSOLVER workspaces go through it too)."""
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    result = fn()
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - before
    del result
    return peak, "torch.cuda.max_memory_allocated increase"
