"""Files that are replaced whole or not at all, in a folder that writers take turns on.

- :func:`locked_folder`: an exclusive ``flock`` on the folder itself, so that writers in threads
  and processes take turns (a killed writer's lock goes with its process), and a sweep of the
  temporary files that killed writers left behind (no other writer is in flight while the lock
  is held, so every temporary file found is stale).
- :func:`write_atomically`: the bytes go to a temporary file beside the target, are flushed to
  disk, and the temporary file is renamed over the target (``os.replace``, atomic on POSIX and
  Windows): a reader sees the old file or the new one, never a mix, and a crash at any instant
  leaves one of the two. The file is created with mode ``0o666`` so that the umask applies, as
  for any file the user creates (``0644`` with the usual umask 022).

Without ``fcntl`` (Windows) there is no lock; the sweep then removes only temporary files older
than an hour, so that it never removes a concurrent writer's file.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

TMP_PREFIX = ".structmat-"
TMP_SUFFIX = ".tmp"
STALE_SECONDS = 3600  # without a lock: temporaries older than this are from killed writers


def temporaries(folder: Path) -> list[Path]:
    """Temporary files of unfinished writes in ``folder``."""
    return sorted(folder.glob(f"{TMP_PREFIX}*{TMP_SUFFIX}"))


@contextlib.contextmanager
def locked_folder(folder: str | os.PathLike) -> Iterator[Path]:
    """Create ``folder`` if needed, hold an exclusive lock on it, and sweep stale temporaries."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder, os.O_RDONLY) if fcntl is not None else None
    locked = False
    try:
        if fd is not None:
            with contextlib.suppress(OSError):  # a file system without flock: no lock, as on Windows
                fcntl.flock(fd, fcntl.LOCK_EX)
                locked = True
        now = time.time()
        for tmp in temporaries(folder):
            with contextlib.suppress(OSError):
                if locked or now - tmp.stat().st_mtime > STALE_SECONDS:
                    tmp.unlink()
        yield folder
    finally:
        if fd is not None:
            os.close(fd)  # releases the lock


def write_atomically(path: str | os.PathLike, data: bytes) -> None:
    """Replace ``path`` by a file holding ``data``, all at once (see the module doc)."""
    path = Path(path)
    tmp = path.parent / f"{TMP_PREFIX}{path.name}-{secrets.token_hex(8)}{TMP_SUFFIX}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _sync_folder(path.parent)


def _sync_folder(folder: Path) -> None:
    """Flush the folder's entry list, so that the rename survives a power loss too."""
    if fcntl is None:  # pragma: no cover - Windows cannot open a folder
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)
