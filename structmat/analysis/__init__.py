"""Expressivity, spectra and subspace analysis of the registered structure families (Monarch, low rank, ...)."""

from .capacity import StructureChoice, choose_structures, empirical_rank
from .compare import EXACT_ERROR, TIE_MARGIN, compare_errors, winners
from .curves import CurvePoint, approximation_curve
from .plots import STYLE, plot_approximation_curves, plot_curve_grid, plot_rank_capacity, plot_spectra
from .spectra import effective_rank, numerical_rank, singular_values, stable_rank
from .subspaces import DeltaAnalysis, delta_analysis, principal_angles
from .targets import target_suite
from .transforms import RecoveryRow, recovery_markdown, recovery_table, transform_suite

__all__ = [
    "EXACT_ERROR",
    "STYLE",
    "TIE_MARGIN",
    "CurvePoint",
    "DeltaAnalysis",
    "RecoveryRow",
    "StructureChoice",
    "approximation_curve",
    "choose_structures",
    "compare_errors",
    "delta_analysis",
    "effective_rank",
    "empirical_rank",
    "numerical_rank",
    "plot_approximation_curves",
    "plot_curve_grid",
    "plot_rank_capacity",
    "plot_spectra",
    "principal_angles",
    "recovery_markdown",
    "recovery_table",
    "singular_values",
    "stable_rank",
    "target_suite",
    "transform_suite",
    "winners",
]
