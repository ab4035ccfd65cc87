"""Butterfly matrices: products of log2(n) factors of 2x2 twiddles, with learnable permutations.

Exact Hadamard and DFT constructions; ``fit_butterfly`` (in :mod:`.fit`) finds the structure of a
dense matrix (closed form over the permutation family, then gradient with relaxed permutations).
"""

from .module import Butterfly, bit_reversal_permutation, dft_butterfly, hadamard_butterfly
from .permutation import RelaxedPermutation, is_permutation, permutation_from_choices

__all__ = [
    "Butterfly",
    "RelaxedPermutation",
    "bit_reversal_permutation",
    "dft_butterfly",
    "hadamard_butterfly",
    "is_permutation",
    "permutation_from_choices",
]
