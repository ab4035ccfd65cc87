"""Butterfly matrices: products of log2(n) factors of 2x2 twiddles; exact Hadamard and DFT."""

from .module import Butterfly, bit_reversal_permutation, dft_butterfly, hadamard_butterfly

__all__ = ["Butterfly", "bit_reversal_permutation", "dft_butterfly", "hadamard_butterfly"]
