"""The colours, line styles and markers every figure shares, without matplotlib.

The structure families name their plot style here (:class:`PlotStyle`), so that registering a
family does not import matplotlib; :mod:`structmat.analysis.plots` draws with the same tables.
"""

from __future__ import annotations

from dataclasses import dataclass

# Okabe & Ito (2008), ordered for contrast on white; yellow last (weak on white).
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442")
LINESTYLES = ("-", "--", "-.", ":", "-", "--", "-.", ":")
MARKERS = ("o", "s", "^", "D", "P", "X", "*", "h")  # "v" is kept for clipped points
CLIP_MARKER = "v"


@dataclass(frozen=True)
class PlotStyle:
    """How one series looks: a matplotlib colour, marker and line style."""

    color: str
    marker: str
    linestyle: str = "-"

    def __post_init__(self) -> None:
        for name in ("color", "marker", "linestyle"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise TypeError(f"{name} must be a non-empty string (a matplotlib {name}), got {value!r}")
        if self.marker == CLIP_MARKER:
            raise ValueError(f"marker must not be {CLIP_MARKER!r}: the figures keep it for clipped points")

    def as_kwargs(self) -> dict[str, str]:
        """``color``, ``linestyle`` and ``marker`` as keyword arguments of ``Axes.plot``."""
        return {"color": self.color, "linestyle": self.linestyle, "marker": self.marker}


def palette_style(index: int) -> PlotStyle:
    """The ``index``-th style of the shared tables (wrapping around)."""
    i = index % len(PALETTE)
    return PlotStyle(PALETTE[i], MARKERS[i], LINESTYLES[i])
