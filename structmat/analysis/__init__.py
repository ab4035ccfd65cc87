"""Expressivity, spectra and subspace analysis of Monarch/MoRe vs low rank/LoRA."""

from .capacity import StructureChoice, choose_structures, empirical_rank
from .curves import CurvePoint, approximation_curve
from .plots import plot_approximation_curves, plot_rank_capacity, plot_spectra
from .spectra import effective_rank, numerical_rank, singular_values, stable_rank
from .subspaces import DeltaAnalysis, delta_analysis, principal_angles
from .targets import target_suite
from .transforms import RecoveryRow, recovery_markdown, recovery_table, transform_suite

__all__ = [
    "CurvePoint",
    "DeltaAnalysis",
    "RecoveryRow",
    "StructureChoice",
    "approximation_curve",
    "choose_structures",
    "delta_analysis",
    "effective_rank",
    "empirical_rank",
    "numerical_rank",
    "plot_approximation_curves",
    "plot_rank_capacity",
    "plot_spectra",
    "principal_angles",
    "recovery_markdown",
    "recovery_table",
    "singular_values",
    "stable_rank",
    "target_suite",
    "transform_suite",
]
