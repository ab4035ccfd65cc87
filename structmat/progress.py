"""The progress bar every long loop uses: ``tqdm.auto`` without its Jupyter warning, and
:func:`progress_bar`, which also reports where output is not a terminal.

In Jupyter without ``ipywidgets``, ``tqdm.auto`` warns "IProgress not found" on import and then
uses its plain text bar anyway. That plain bar is our fallback, so the warning asks the user for
nothing; we import ``tqdm.auto`` once here with that one warning silenced. With ``ipywidgets``
installed, Jupyter shows widget bars as usual.

tqdm's own ``disable=None`` hides the bar when stderr is not a terminal: a CLI job whose output
goes to a pipe or a log file (CI, ``nohup``, ``| tee``) then prints nothing for minutes. With
``show=True``, :func:`progress_bar` draws the usual bar on a terminal or in Jupyter and otherwise
writes plain lines to stderr: one when the loop starts, one every :data:`LINE_SECONDS` seconds at
most, and one when it ends.
"""

from __future__ import annotations

import io
import re
import sys
import warnings
from collections.abc import Iterable
from typing import Any, TextIO

from tqdm.std import tqdm as plain_tqdm

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="IProgress not found")
    from tqdm.auto import tqdm

__all__ = ["LINE_SECONDS", "progress_bar", "tqdm"]

LINE_SECONDS = 10.0  # at most one progress line this often where output is not a terminal
_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # tqdm's cursor moves for nested bars


class _Lines(io.TextIOBase):
    """A stream for tqdm that writes each of its in-place updates (``"\\r" + text``) as a line."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        line = _ESCAPE.sub("", text).replace("\r", "").strip()
        if line:  # tqdm clears a bar by writing blanks: nothing to log
            self.stream.write(line + "\n")
            self.stream.flush()
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


class _LineBar(plain_tqdm):
    """tqdm writing plain lines: a new description or postfix waits for the next line instead of
    forcing one (tqdm's ``refresh=True``), so lines come at most every ``mininterval`` s."""

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        super().set_description(desc, refresh=False)

    def set_description_str(self, desc: str | None = None, refresh: bool = True) -> None:
        super().set_description_str(desc, refresh=False)

    def set_postfix(self, ordered_dict: Any = None, refresh: bool = True, **kwargs: Any) -> None:
        super().set_postfix(ordered_dict, refresh=False, **kwargs)

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        super().set_postfix_str(s, refresh=False)


def _in_jupyter() -> bool:
    """Whether this runs in a Jupyter kernel (which shows tqdm's in-place updates), as tqdm.autonotebook decides."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None and hasattr(ipython, "get_ipython") else None
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


def _live(stream: TextIO) -> bool:
    """Whether ``stream`` shows a bar redrawn in place: a terminal, or a Jupyter kernel's."""
    isatty = getattr(stream, "isatty", None)
    return bool(isatty is not None and isatty()) or _in_jupyter()


def progress_bar(iterable: Iterable[Any] | None = None, *, show: bool | None = None, **kwargs: Any) -> tqdm:
    """A tqdm bar over ``iterable`` (keyword arguments go to tqdm).

    ``show``: ``None`` (the library default) shows it where stderr is a terminal or in Jupyter
    only, as tqdm's ``disable=None``; ``True`` (CLI jobs) shows it there and otherwise writes
    plain lines to stderr (the first, one every :data:`LINE_SECONDS` s at most, the last);
    ``False`` shows nothing.
    """
    if show is not True:
        return tqdm(iterable, disable=None if show is None else True, **kwargs)
    stream = kwargs.pop("file", None) or sys.stderr
    if _live(stream):
        return tqdm(iterable, disable=False, file=stream, **kwargs)
    total = kwargs.get("total", len(iterable) if hasattr(iterable, "__len__") else None)  # type: ignore[arg-type]
    counted = "{n_fmt}/{total_fmt} ({percentage:.0f}%)" if total is not None else "{n_fmt}"
    kwargs.update(
        file=_Lines(stream),
        mininterval=LINE_SECONDS,
        leave=True,  # the last line says the loop finished
        bar_format="{desc}: " + counted + " [{elapsed}<{remaining}, {rate_fmt}]{postfix}",
    )
    return _LineBar(iterable, disable=False, **kwargs)
