"""structmat: structured matrices (Monarch/MoRe, butterfly, low rank, Kronecker) and PEFT adapters.

Every structure is a :class:`StructuredLinear`: it acts like ``nn.Linear`` without bias,
``forward(x) = x @ M.T`` with ``M = to_dense()`` of shape ``(out_features, in_features)``.
Every family is registered once in :mod:`structmat.registry`; the analysis, plots and report
read it (:func:`structures` lists the names, :func:`register_structure` adds your own).
"""

from .base import StructuredLinear
from .butterfly import Butterfly, dft_butterfly, hadamard_butterfly
from .butterfly.family import BUTTERFLY
from .butterfly.fit import fit_butterfly
from .fitting import optimal_error
from .kronecker import Kronecker, fit_kronecker
from .kronecker.family import KRONECKER
from .lowrank import LowRank
from .lowrank.family import LOWRANK
from .lowrank.fit import fit_lowrank
from .monarch import Monarch, MonarchShape, dft_monarch, monarch_multiply
from .monarch.family import MONARCH
from .monarch.fit import fit_monarch
from .registry import StructureFamily, register_structure, structures, unregister_structure

# The built-in families, in the order studies list them.
for _family in (LOWRANK, MONARCH, BUTTERFLY, KRONECKER):
    register_structure(_family)
del _family

__version__ = "0.1.0"

__all__ = [
    "Butterfly",
    "Kronecker",
    "LowRank",
    "Monarch",
    "MonarchShape",
    "StructureFamily",
    "StructuredLinear",
    "dft_butterfly",
    "dft_monarch",
    "fit_butterfly",
    "fit_kronecker",
    "fit_lowrank",
    "fit_monarch",
    "hadamard_butterfly",
    "monarch_multiply",
    "optimal_error",
    "register_structure",
    "structures",
    "unregister_structure",
]
