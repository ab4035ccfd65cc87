"""Monarch matrices: the module, the multiply and its paths, the shape bookkeeping and the optimal fit."""

from .dft import dft_monarch
from .dispatch import MultiplyPath, backend, get_backend, select_path
from .module import Monarch
from .multiply import monarch_multiply
from .structure import MonarchShape

__all__ = [
    "Monarch",
    "MonarchShape",
    "MultiplyPath",
    "backend",
    "dft_monarch",
    "get_backend",
    "monarch_multiply",
    "select_path",
]
