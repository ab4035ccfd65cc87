"""Matplotlib figures for spectra, approximation curves and rank capacity.

Every function draws into ``ax`` when one is given (so it fits a user's subplot grid) or into a
new figure, and returns the figure. Inputs may be torch tensors, numpy arrays or lists. All
figures share one style (:data:`STYLE`: sizes, fonts, the Okabe-Ito colour-blind safe palette,
and a distinct line style and marker per series, so that overlapping curves stay visible); use
it for your own figures with ``plt.style.use(STYLE)``.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping, Sequence
from contextlib import contextmanager

import matplotlib.pyplot as plt
import numpy as np
import torch
from cycler import cycler
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, NullFormatter

from ..palette import CLIP_MARKER, LINESTYLES, MARKERS, PALETTE, palette_style
from ..registry import style_of
from .capacity import StructureChoice
from .compare import EXACT_ERROR
from .curves import CurvePoint

STYLE: dict = {
    "figure.figsize": (6.4, 4.0),
    "figure.dpi": 100,
    "savefig.dpi": 150,
    "savefig.bbox": "tight",
    "svg.fonttype": "none",  # text stays text in SVG files
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "legend.fontsize": 8,
    "legend.framealpha": 0.85,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "axes.grid": True,
    "axes.grid.which": "major",
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "lines.linewidth": 1.6,
    "lines.markersize": 5,
    "axes.prop_cycle": cycler(color=PALETTE, linestyle=LINESTYLES, marker=MARKERS),
}


def series_style(name: str, index: int) -> dict:
    """Colour, line style and marker of a series: the registered style of a structure family's
    series label (:func:`structmat.registry.style_of`), else the ``index``-th of the shared tables."""
    style = style_of(name) or palette_style(index)
    return style.as_kwargs()


def _layered(index: int, count: int) -> dict:
    """Marker size of series ``index`` of ``count``: earlier series get larger markers, so that series
    drawn on top of one another (ties) all stay visible as nested markers; lines keep one width."""
    return {"markersize": STYLE["lines.markersize"] + 1.3 * (count - 1 - index)}


@contextmanager
def _styled():
    with plt.rc_context(STYLE):
        yield


def _new_axes(ax: Axes | None, figsize: tuple[float, float] | None = None) -> Axes:
    if ax is not None:
        if not isinstance(ax, Axes):
            raise TypeError(f"ax must be a matplotlib Axes, got {type(ax).__name__}")
        return ax
    _, ax = plt.subplots(figsize=figsize, layout="constrained")
    return ax


def _wrap(title: str, width: int = 60) -> str:
    return "\n".join(textwrap.wrap(title, width)) if title else title


def _as_vector(name: str, values: object) -> tuple[np.ndarray, float, str]:
    """``values`` as a float64 vector, plus the machine epsilon and name of its own dtype."""
    if isinstance(values, torch.Tensor):
        if values.is_complex() or not (values.is_floating_point() or values.dtype in (torch.int32, torch.int64)):
            raise TypeError(f"{name} must be real numbers, got dtype {values.dtype}")
        dtype = values.dtype if values.is_floating_point() else torch.float64
        eps, dtype_name = torch.finfo(dtype).eps, str(dtype).removeprefix("torch.")
        arr = values.detach().cpu().to(torch.float64).numpy()
    else:
        arr = np.asarray(values)
        if arr.dtype.kind not in "fiu":
            raise TypeError(f"{name} must be real numbers, got dtype {arr.dtype}")
        dtype = arr.dtype if arr.dtype.kind == "f" else np.dtype(np.float64)
        eps, dtype_name = float(np.finfo(dtype).eps), str(dtype)
        arr = arr.astype(np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D sequence, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or inf values")
    return arr, eps, dtype_name


def _compact(v: float, digits: int = 3) -> str:
    """Short tick label with at most ``digits`` significant digits: 2.3k, 37k, 1.5M, 0.8, 1e-06."""
    if v == 0:
        return "0"
    a = abs(v)
    if 1 <= a < 1000 and v == round(v):
        return str(int(round(v)))  # small counts exactly: 128, 768
    if a >= 1e-3:
        for scale, suffix in ((1e6, "M"), (1e3, "k"), (1.0, "")):
            if a >= scale or scale == 1.0:
                return f"{float(f'{v / scale:.{digits}g}'):g}{suffix}"
    exp = math.floor(math.log10(a) + 1e-9)
    mant = v / 10**exp
    return f"$10^{{{exp}}}$" if abs(mant - 1) < 1e-6 else f"{mant:g}e{exp}"


def _log_axis(ax: Axes, which: str, lo: float, hi: float, at: np.ndarray | None = None) -> None:
    """Log scale with labelled ticks that do not collide.

    ``at``: the few values the data sit at (e.g. parameter budgets); when given and the range is
    at most 3 decades, the ticks go there (labels thinned so that neighbours stay apart), else
    1-2-5 or decade ticks depending on the range.
    """
    axis = ax.xaxis if which == "x" else ax.yaxis
    (ax.set_xscale if which == "x" else ax.set_yscale)("log")
    decades = math.log10(hi / lo) if lo > 0 and hi > lo else 0.0
    axis.set_minor_locator(LogLocator(base=10, subs="auto", numticks=12))
    axis.set_minor_formatter(NullFormatter())
    if at is not None and 0 < decades <= 3 and len(np.unique(at)) <= 8:
        ticks: list[float] = []
        for v in np.unique(at):  # ascending; keep ticks at least 1/8 of the axis apart
            if not ticks or math.log10(v / ticks[-1]) >= decades / 8:
                ticks.append(float(v))
        axis.set_major_locator(FixedLocator(ticks))
        axis.set_major_formatter(FuncFormatter(lambda v, _: _compact(v, 2)))
        return
    if decades <= 0.5 and which == "y":
        subs = (1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0)
    elif decades <= 1.0:
        subs = (1.0, 2.0, 3.0, 5.0, 7.0)
    elif decades <= 2.5:
        subs = (1.0, 2.0, 5.0)
    else:
        subs = (1.0,)
    axis.set_major_locator(LogLocator(base=10, subs=subs, numticks=12))
    axis.set_major_formatter(FuncFormatter(lambda v, _: _compact(v)))


def _clip_note(text: str) -> Line2D:
    return Line2D([], [], color="0.3", linestyle="none", marker=CLIP_MARKER, label=text)


def plot_spectra(
    spectra: Mapping[str, object],
    title: str = "Singular value spectra",
    *,
    ax: Axes | None = None,
    normalize: bool = False,
    floor: float | None = None,
) -> Figure:
    """Singular values (as given, descending) against their index, log y, one line per entry.

    ``spectra``: name -> 1-D singular values (tensor, numpy array or list). ``normalize=True``
    divides each curve by its largest value (``sigma_i / sigma_1``); the default plots the values
    as passed, so a weight, its fit and its residual stay comparable. Values below
    ``floor * sigma_1`` of their own curve (default ``floor``: the machine epsilon of the input's
    dtype, i.e. its round-off level) carry no information and are drawn at that level, the first
    of them marked ``v``; the legend says so. A curve that is all zero is named
    in the legend and not drawn.
    """
    if not isinstance(spectra, Mapping) or not spectra:
        raise ValueError("spectra must be a non-empty mapping name -> singular values")
    if floor is not None and not 0 < floor < 1:
        raise ValueError(f"floor must be in (0, 1), got {floor!r}")
    with _styled():
        ax = _new_axes(ax)
        clipped_dtypes: list[str] = []
        lo, hi = math.inf, 0.0
        for i, (name, values) in enumerate(spectra.items()):
            sv, eps, dtype_name = _as_vector(f"spectra[{name!r}]", values)
            if (sv < 0).any():
                raise ValueError(f"spectra[{name!r}] has negative entries; singular values are >= 0")
            style = series_style(name, i)
            top = sv.max()
            if top == 0:
                ax.plot([], [], label=f"{name} (all zero)", **style)
                continue
            if normalize:
                sv = sv / top
                top = 1.0
            level = (eps if floor is None else floor) * top
            idx = np.arange(1, len(sv) + 1)
            low = sv < level
            informative = np.flatnonzero(~low)  # markers only where the values carry information
            every = max(1, len(informative) // 12)
            start = (i * every) // len(spectra)  # stagger the markers of overlapping curves
            ax.plot(idx, np.maximum(sv, level), label=name, markevery=list(informative[start::every]), **style)
            if low.any():
                first = int(np.argmax(low))
                ax.plot(idx[first], level, color=style["color"], marker=CLIP_MARKER, markersize=8, linestyle="none")
                clipped_dtypes.append(dtype_name)
            lo, hi = min(lo, float(np.maximum(sv, level).min())), max(hi, top)
        if clipped_dtypes:
            if floor is None:
                names = ", ".join(dict.fromkeys(clipped_dtypes))
                note = f"σᵢ below {names} round-off (eps·σ₁): drawn there"
            else:
                note = f"σᵢ below {floor:g}·σ₁: drawn there"
            ax.add_line(_clip_note(note))  # legend entry only (no data)
        if hi > 0:
            _log_axis(ax, "y", lo, hi)
        ax.set_xlabel("index i")
        ax.set_ylabel("σᵢ / σ₁" if normalize else "singular value σᵢ")
        ax.set_title(_wrap(title))
        ax.legend(loc="best")
    return ax.figure


def _curve_series(points: object) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Name -> (parameters, relative errors), sorted by parameters, structures that fit only."""
    if isinstance(points, Mapping):
        out = {}
        for name, pair in points.items():
            if not isinstance(pair, (tuple, list)) or len(pair) != 2:
                raise ValueError(f"points[{name!r}] must be a pair (parameters, errors)")
            x, _, _ = _as_vector(f"points[{name!r}] parameters", pair[0])
            y, _, _ = _as_vector(f"points[{name!r}] errors", pair[1])
            if x.shape != y.shape:
                raise ValueError(f"points[{name!r}]: {len(x)} parameter counts but {len(y)} errors")
            if (y < 0).any():
                raise ValueError(f"points[{name!r}] errors must be >= 0")
            fit = x > 0
            order = np.argsort(x[fit], kind="stable")
            out[name] = (x[fit][order], y[fit][order])
        return out
    if not isinstance(points, Sequence) or not all(isinstance(p, CurvePoint) for p in points):
        raise TypeError("points must be a sequence of CurvePoint or a mapping name -> (parameters, errors)")
    out = {}
    for structure in dict.fromkeys(p.structure for p in points):
        # one point per parameter count (the butterfly's single size repeats at every budget it fits)
        pts = dict(sorted((int(p.params), float(p.rel_error)) for p in points if p.structure == structure))
        pts.pop(0, None)
        if pts:
            out[structure] = (np.array(list(pts), dtype=np.float64), np.array(list(pts.values())))
    return out


def plot_approximation_curves(
    points: Sequence[CurvePoint] | Mapping[str, object],
    title: str = "Approximation error",
    *,
    ax: Axes | None = None,
    floor: float = EXACT_ERROR,
    legend: bool = True,
) -> Figure:
    """Relative Frobenius error against parameters used, one line per structure (log x).

    ``points``: the output of :func:`approximation_curve`, or a mapping structure -> (parameters,
    errors) of tensors/arrays/lists. Structures with no member within a budget are left out
    (not drawn as error 1). The y axis is logarithmic when the errors span more than a factor 3,
    else linear. Errors below ``floor`` (exact fits) are drawn at ``floor`` with a ``v`` marker,
    and the legend says so (only when it happens).
    """
    series = _curve_series(points)
    own = ax is None
    with _styled():
        ax = _new_axes(ax, figsize=(7.6, 4.0) if own else None)
        clipped = False
        ys_all, xs_all = [], []
        lines = [name for name, (x, _) in series.items() if len(x) > 1]  # single points get their own size
        for i, (name, (x, y)) in enumerate(series.items()):
            style = series_style(name, i)
            low = y < floor
            y = np.maximum(y, floor)
            single = len(x) == 1  # e.g. the butterfly's one size: make it stand out
            size = {"markersize": 10, "zorder": 3} if single else _layered(lines.index(name), len(lines))
            ax.plot(x, y, label=name, **size, **style)
            if low.any():
                clipped = True
                ax.plot(x[low], y[low], linestyle="none", marker=CLIP_MARKER, color=style["color"], markersize=8)
            xs_all.append(x)
            ys_all.append(y)
        if xs_all:
            x_all, y_all = np.concatenate(xs_all), np.concatenate(ys_all)
            _log_axis(ax, "x", x_all.min(), x_all.max(), at=max(xs_all, key=len))
            if y_all.max() > 3 * y_all.min():
                _log_axis(ax, "y", y_all.min(), y_all.max())
        if clipped:
            ax.add_line(_clip_note(f"error < {floor:g} (exact fit): drawn at {floor:g}"))
        ax.set_xlabel("parameters")
        ax.set_ylabel("relative error ‖W − M‖_F / ‖W‖_F")
        ax.set_title(_wrap(title))
        if legend and series:  # in a figure of our own: beside the axes, where it can hide no point
            ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1)) if own else ax.legend(loc="best")
    return ax.figure


def plot_curve_grid(
    curves: Mapping[str, Sequence[CurvePoint]],
    title: str = "Relative error vs parameters",
    ncols: int | None = None,
    floor: float = EXACT_ERROR,
    xlabel: str = "parameters",
) -> Figure:
    """One subplot of :func:`plot_approximation_curves` per target, with one shared legend.

    ``curves``: target name -> what :func:`plot_approximation_curves` takes (curve points, or a
    mapping series -> (x values, errors)). ``ncols`` defaults to the 2-4 columns that leave the
    fewest empty slots (one slot holds the legend); ``xlabel`` names the shared x axis.
    """
    if not isinstance(xlabel, str):
        raise TypeError(f"xlabel must be a string, got {type(xlabel).__name__}")
    if not isinstance(curves, Mapping) or not curves:
        raise ValueError(f"curves must be a non-empty mapping target name -> curve points, got {type(curves).__name__}")
    n = len(curves)
    if ncols is None:
        ncols = min(range(4, 1, -1), key=lambda c: -(-(n + 1) // c) * c - (n + 1))
    if not isinstance(ncols, int) or ncols < 1:
        raise ValueError(f"ncols must be a positive integer, got {ncols!r}")
    ncols = min(ncols, n + 1)
    nrows = math.ceil((n + 1) / ncols)
    with _styled():
        fig, axes = plt.subplots(nrows, ncols, figsize=(3.3 * ncols, 2.9 * nrows), layout="constrained", squeeze=False)
        flat = list(axes.flat)
        handles: dict[str, object] = {}
        for ax, (name, pts) in zip(flat, curves.items(), strict=False):
            try:
                plot_approximation_curves(pts, str(name), ax=ax, floor=floor, legend=False)
            except (TypeError, ValueError) as err:
                plt.close(fig)
                raise type(err)(f"curves[{name!r}]: {err}") from None
            ax.set_title(_wrap(name, 34), fontsize=9)
            ax.set_xlabel("")
            ax.set_ylabel("")
            for h, label in zip(*ax.get_legend_handles_labels(), strict=True):
                handles.setdefault(label, h)
        for ax in flat[n:]:
            ax.set_axis_off()
        legend_ax = flat[n] if n < len(flat) else None
        if legend_ax is not None:
            legend_ax.legend(handles.values(), handles.keys(), loc="center", fontsize=9, title="structure")
        else:
            fig.legend(handles.values(), handles.keys(), loc="outside lower center", ncols=4, fontsize=9)
        fig.supxlabel(xlabel, fontsize=10)
        fig.supylabel("relative error ‖W − M‖_F / ‖W‖_F", fontsize=10)
        fig.suptitle(_wrap(title, 100), fontsize=12)
    return fig


def plot_rank_capacity(
    choices: Sequence[StructureChoice] | Mapping[str, object],
    title: str = "Rank capacity",
    *,
    ax: Axes | None = None,
) -> Figure:
    """Horizontal bars: the largest rank each structure reaches within a budget.

    ``choices``: the output of :func:`choose_structures` (bars are labelled with the rank and the
    parameters used; a family whose smallest member exceeds the budget is listed as "does not
    fit", not drawn as rank 0), or a mapping structure -> max rank (ints, numpy or torch scalars).
    """
    if isinstance(choices, Mapping):
        rows = []
        for name, r in choices.items():
            r = r.item() if isinstance(r, (torch.Tensor, np.generic)) else r
            if isinstance(r, bool) or not isinstance(r, (int, float)) or r < 0 or r != int(r):
                raise ValueError(f"choices[{name!r}] must be a non-negative integer rank, got {r!r}")
            rows.append((str(name), int(r), None, None, int(r) > 0))
    elif isinstance(choices, Sequence) and all(isinstance(c, StructureChoice) for c in choices):
        rows = [(c.structure, c.max_rank, c.params, c.min_params, c.fits) for c in choices]
    else:
        raise TypeError("choices must be a sequence of StructureChoice or a mapping structure -> max rank")
    if not rows:
        raise ValueError("choices must not be empty")
    with _styled():
        ax = _new_axes(ax, figsize=(6.4, 0.45 * len(rows) + 1.4))
        ypos = np.arange(len(rows))[::-1]
        top = max(r for _, r, _, _, _ in rows) or 1
        for y, (name, rank, params, smallest, fits) in zip(ypos, rows, strict=True):
            if fits:
                ax.barh(y, rank, color=series_style(name, 0)["color"], height=0.6)
                label = f"{rank:,d}" + (f"  ({params:,d} params)" if params is not None else "")
                ax.annotate(label, (rank, y), xytext=(4, 0), textcoords="offset points", va="center", fontsize=8)
            else:
                need = f" (needs {smallest:,d} params)" if smallest else ""
                ax.annotate(
                    f"does not fit{need}", (0, y), xytext=(4, 0), textcoords="offset points",
                    va="center", fontsize=8, style="italic", color="0.35",
                )  # fmt: skip
        ax.set_yticks(ypos, [r[0] for r in rows])
        ax.set_xlim(0, top * 1.45)
        ax.set_ylim(-0.6, len(rows) - 0.4)
        ax.grid(axis="y", visible=False)
        ax.set_xlabel("max rank")
        ax.set_ylabel("structure (largest member within the budget)")
        ax.set_title(_wrap(title))
    return ax.figure
