"""Matplotlib figures for spectra, approximation curves and rank capacity (each returns a Figure)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from .capacity import StructureChoice  # noqa: E402
from .curves import CurvePoint  # noqa: E402


def _check_items(name: str, items: object, kind: type) -> None:
    if not isinstance(items, (list, tuple)) or not all(isinstance(i, kind) for i in items):
        raise TypeError(f"{name} must be a list of {kind.__name__}, got {type(items).__name__}")


def plot_spectra(spectra: Mapping[str, torch.Tensor], title: str = "Singular value spectra") -> Figure:
    """Normalised singular values (descending) of several matrices, log scale.

    ``spectra``: name -> 1-D tensor of singular values (as :func:`singular_values` returns).
    """
    if not isinstance(spectra, Mapping) or not spectra:
        raise ValueError(f"spectra must be a non-empty mapping name -> 1-D tensor of singular values, got {spectra!r}")
    for name, sv in spectra.items():
        if not isinstance(sv, torch.Tensor) or sv.dim() != 1 or sv.numel() == 0 or sv.is_complex() or sv.is_meta:
            shape = tuple(sv.shape) if isinstance(sv, torch.Tensor) else type(sv).__name__
            raise ValueError(f"spectra[{name!r}] must be a non-empty 1-D real tensor of singular values, got {shape}")
        if not bool(torch.isfinite(sv).all()):
            raise ValueError(f"spectra[{name!r}] contains NaN or inf values")
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, sv in spectra.items():
        sv = sv.detach().cpu().double()
        sv = sv / sv[0] if sv[0] > 0 else sv
        ax.semilogy(range(1, len(sv) + 1), sv.clamp_min(1e-16).numpy(), label=name)
    ax.set_xlabel("index i")
    ax.set_ylabel("sigma_i / sigma_1")
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    return fig


def plot_approximation_curves(
    points: Sequence[CurvePoint], title: str = "Approximation error", floor: float = 1e-6
) -> Figure:
    """Relative Frobenius error vs parameters used, one line per structure (log-log).

    Errors below ``floor`` (exact fits, ~1e-16) are drawn at ``floor`` so the differences near
    1 stay visible; the axis label says so.
    """
    _check_items("points", points, CurvePoint)
    fig, ax = plt.subplots(figsize=(6, 4))
    for structure in dict.fromkeys(p.structure for p in points):
        pts = sorted((p.params, p.rel_error) for p in points if p.structure == structure and p.params > 0)
        if pts:
            xs, ys = zip(*dict(pts).items(), strict=True)
            ax.loglog(xs, [max(y, floor) for y in ys], marker="o", label=structure)
    ax.set_xlabel("parameters")
    ax.set_ylabel(f"||W - M||_F / ||W||_F (clipped at {floor:g})")
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    return fig


def plot_rank_capacity(choices: Sequence[StructureChoice], title: str = "Rank capacity") -> Figure:
    """Bars: maximal rank of each structure at the given budget (labels show parameters used)."""
    _check_items("choices", choices, StructureChoice)
    fig, ax = plt.subplots(figsize=(6, 4))
    names = [c.structure for c in choices]
    ranks = [c.max_rank for c in choices]
    bars = ax.bar(range(len(names)), ranks, color="tab:blue")
    for bar, c in zip(bars, choices, strict=True):
        ax.annotate(
            f"{c.params:,d} p",
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center",
            va="bottom",
            fontsize=7,
        )
    ax.set_xticks(range(len(names)), names, rotation=20, ha="right", fontsize=8)
    ax.set_xlabel("structure (largest member within the budget)")
    ax.set_ylabel("max rank")
    ax.set_title(title)
    fig.tight_layout()
    return fig
