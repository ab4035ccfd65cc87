"""One JSON record per fine-tuning run, written once, read by the tables and the statistics.

A record holds what is needed to recompute every number from it: the run's settings (task,
model, method, structure, rank/nblocks, targets, learning rate, seed, steps, batch), trainable
parameters, wall time, device, library versions and the code's git commit, the per-example
predictions with example ids and gold labels of every evaluated split (``"validation"`` chose
the learning rate, ``"test"`` is reported), and whether training diverged.

Records are files named by their run (:func:`record_path`) and written atomically, so a sweep
that is killed leaves complete records only and continues where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path

RECORD_VERSION = 1


def spec_key(spec: Mapping) -> str:
    """A short hash of a run's settings (key order does not matter)."""
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:10]


def record_path(folder: str | os.PathLike, name: str, spec: Mapping) -> Path:
    """``folder/<name>-<spec_key>.json``: ``name`` is for people, the key tells runs apart."""
    return Path(folder) / f"{name}-{spec_key(spec)}.json"


def environment() -> dict:
    """Versions of what a run depends on, the machine, and the code's git commit."""
    import importlib.metadata as md

    import torch

    versions = {}
    for pkg in ("torch", "transformers", "peft", "numpy", "structmat"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    try:
        root = Path(__file__).resolve().parents[2]
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=False
        ).stdout.strip()
        dirty = bool(
            subprocess.run(
                ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no", "structmat"],
                capture_output=True,
                text=True,
                timeout=10,
                check=False,
            ).stdout.strip()
        )
    except (OSError, subprocess.SubprocessError):
        commit, dirty = "", False
    return {
        "versions": versions,
        "git_commit": commit or None,
        "git_dirty": dirty,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "processor": _cpu_name(),
        "threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def write_record(path: str | os.PathLike, record: Mapping) -> None:
    """Write ``record`` as JSON at ``path`` all at once (a temporary file renamed over it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(dict(record), separators=(",", ":")) + "\n")
    os.replace(tmp, path)


def read_record(path: str | os.PathLike) -> dict:
    with open(path) as f:
        return json.load(f)


def read_records(folder: str | os.PathLike) -> Iterator[dict]:
    """Every record under ``folder`` (recursively), in path order."""
    for path in sorted(Path(folder).rglob("*.json")):
        record = read_record(path)
        if isinstance(record, dict) and record.get("record_version") == RECORD_VERSION:
            yield record
