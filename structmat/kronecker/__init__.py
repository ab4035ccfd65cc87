"""Sums of Kronecker products ``sum_k A_k ⊗ B_k`` and their optimal (rearranged SVD) fit."""

from .fit import fit_kronecker, kronecker_optimal_error, rearrange
from .module import Kronecker, balanced_a_shape

__all__ = ["Kronecker", "balanced_a_shape", "fit_kronecker", "kronecker_optimal_error", "rearrange"]
