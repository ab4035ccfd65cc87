"""Monarch matrices: the module, the multiply, the shape bookkeeping and the optimal fit."""

from .module import Monarch
from .multiply import get_backend, monarch_multiply, set_backend
from .structure import MonarchShape

__all__ = ["Monarch", "MonarchShape", "get_backend", "monarch_multiply", "set_backend"]
