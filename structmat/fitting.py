"""One entry point to the theoretical optimum of each structure that has a closed form."""

from __future__ import annotations

from typing import Literal

import torch

from .lowrank.fit import lowrank_optimal_error
from .monarch.fit import monarch_optimal_error
from .monarch.structure import MonarchShape


def optimal_error(W: torch.Tensor, structure: Literal["monarch", "lowrank"] | MonarchShape, **kwargs) -> torch.Tensor:
    """The smallest relative Frobenius error ``||W - M||_F / ||W||_F`` of a structure.

    ``optimal_error(W, "monarch", nblocks=4, rank=1)``, ``optimal_error(W, "lowrank",
    rank=8)``, or a :class:`~structmat.monarch.MonarchShape` for general Monarch factor shapes:
    ``optimal_error(W, MonarchShape.from_factor_shapes((k, q, p), (l, s, r)))`` (no
    ``nblocks``/``rank`` then). Computed from singular values, independently of the fitted
    factors. Butterfly has no closed-form optimum (its fit is iterative), so it is not offered here.
    """
    if isinstance(structure, MonarchShape):
        return monarch_optimal_error(W, structure=structure, **kwargs)
    if structure == "monarch":
        return monarch_optimal_error(W, **kwargs)
    if structure == "lowrank":
        return lowrank_optimal_error(W, **kwargs)
    raise ValueError(f"structure must be 'monarch', 'lowrank' or a MonarchShape, got {structure!r}")
