"""Monarch matrices: the module, the multiply, the shape bookkeeping and the optimal fit."""

from .module import Monarch
from .multiply import monarch_multiply
from .structure import MonarchShape

__all__ = ["Monarch", "MonarchShape", "monarch_multiply"]
