"""The tie rule: when one approximation error counts as "better" than another.

The fits compared here are deterministic (closed-form SVDs) or nearly so (butterfly: best of a
few starts), so no sampling interval exists; the question is whether a difference matters.
We call structure A better than B only when A's relative error is lower than B's by more than
``TIE_MARGIN`` (1 %) of B's error; anything closer is a tie. Errors below ``EXACT_ERROR`` all
count as an exact fit (they tie with each other).
"""

from __future__ import annotations

from collections.abc import Mapping

TIE_MARGIN = 0.01  # A beats B only if err_A < (1 - TIE_MARGIN) * err_B
EXACT_ERROR = 1e-6  # relative errors below this are "exact" (and tie with each other)


def _check(name: str, value: float) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a real number (a relative error), got {value!r}") from None
    if not value >= 0 or value == float("inf"):
        raise ValueError(f"{name} must be a finite non-negative error, got {value!r}")
    return max(value, EXACT_ERROR)


def _check_margin(margin: float) -> None:
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not 0 <= margin < 1:
        raise ValueError(f"margin must be a number in [0, 1), got {margin!r}")


def compare_errors(a: float, b: float, margin: float = TIE_MARGIN) -> int:
    """``-1`` if error ``a`` is better (lower by more than ``margin`` of ``b``), ``1`` if ``b`` is, else ``0``."""
    _check_margin(margin)
    a, b = _check("a", a), _check("b", b)
    if a < (1 - margin) * b:
        return -1
    if b < (1 - margin) * a:
        return 1
    return 0


def winners(errors: Mapping[str, float], margin: float = TIE_MARGIN) -> list[str]:
    """Names whose error no other entry beats: the best one and every one tied with it (in input order)."""
    if not isinstance(errors, Mapping) or not errors:
        raise ValueError(f"errors must be a non-empty mapping name -> relative error, got {errors!r}")
    _check_margin(margin)
    checked = {k: _check(f"errors[{k!r}]", e) for k, e in errors.items()}
    best = min(checked, key=checked.get)
    return [k for k, e in checked.items() if compare_errors(checked[best], e, margin) == 0]
