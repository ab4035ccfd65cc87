"""The progress bar every long loop uses: ``tqdm.auto`` without its Jupyter warning.

In Jupyter without ``ipywidgets``, ``tqdm.auto`` warns "IProgress not found" on import and then
uses its plain text bar anyway. That plain bar is our fallback, so the warning asks the user for
nothing; we import ``tqdm.auto`` once here with that one warning silenced. With ``ipywidgets``
installed, Jupyter shows widget bars as usual.
"""

from __future__ import annotations

import warnings

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="IProgress not found")
    from tqdm.auto import tqdm

__all__ = ["tqdm"]
