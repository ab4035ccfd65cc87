"""Where structmat keeps files it derives once (dequantised weights, extracted task files).

``$STRUCTMAT_CACHE`` if set, else ``$XDG_CACHE_HOME/structmat``, else ``~/.cache/structmat``.
Writers build a sibling temporary folder and ``os.replace`` it into place, so a reader (or a
second process, e.g. a pytest-xdist worker) never sees a half-written entry.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable


def cache_dir(*parts: str) -> str:
    root = os.environ.get("STRUCTMAT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "structmat"
    )
    return os.path.join(root, *parts)


def cached_folder(path: str, build: Callable[[str], None]) -> str:
    """``path`` if it exists, else ``build(tmp)`` fills a temporary folder that becomes ``path``."""
    if os.path.isdir(path):
        return path
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-", dir=parent)
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache is as readable as any download
    try:
        build(tmp)
        try:
            os.replace(tmp, path)
        except OSError:  # another process finished first; its copy is as good as ours
            if not os.path.isdir(path):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path
