"""structmat: structured matrices (Monarch/MoRe, butterfly, low rank) and PEFT adapters.

Every structure is a :class:`StructuredLinear`: it acts like ``nn.Linear`` without bias,
``forward(x) = x @ M.T`` with ``M = to_dense()`` of shape ``(out_features, in_features)``.
"""

from .base import StructuredLinear
from .butterfly import Butterfly, dft_butterfly, hadamard_butterfly
from .butterfly.fit import fit_butterfly
from .fitting import optimal_error
from .lowrank import LowRank
from .lowrank.fit import fit_lowrank
from .monarch import Monarch, MonarchShape, dft_monarch, monarch_multiply
from .monarch.fit import fit_monarch

__version__ = "0.1.0"

__all__ = [
    "Butterfly",
    "LowRank",
    "Monarch",
    "MonarchShape",
    "StructuredLinear",
    "dft_butterfly",
    "dft_monarch",
    "fit_butterfly",
    "fit_lowrank",
    "fit_monarch",
    "hadamard_butterfly",
    "monarch_multiply",
    "optimal_error",
]
