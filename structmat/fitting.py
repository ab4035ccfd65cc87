"""One entry point to the optimal error of every registered family that has one."""

from __future__ import annotations

import torch

from .registry import families, get_structure


def optimal_error(W: torch.Tensor, structure: str | object, **kwargs) -> torch.Tensor:
    """The smallest relative Frobenius error ``||W - M||_F / ||W||_F`` of a structure family.

    ``structure`` is a registered name with the member's hyper-parameters as keywords:
    ``optimal_error(W, "monarch", nblocks=4, rank=1)``, ``optimal_error(W, "lowrank", rank=8)``,
    ``optimal_error(W, "kronecker", a_shape=(16, 16), rank=2)``; or an object that names a member
    by itself, such as a :class:`~structmat.monarch.MonarchShape` for general Monarch factor
    shapes (no ``nblocks``/``rank`` then). Computed independently of the fitted factors (from
    singular values). Families whose fit is iterative (butterfly) have no such optimum and are
    refused.
    """
    if isinstance(structure, str):
        family = get_structure(structure)
    else:
        family = next((f for f in families() if f.shape_type and isinstance(structure, f.shape_type)), None)
        if family is None:
            raise TypeError(
                f"structure must be a registered structure name or a shape object one of them takes "
                f"(e.g. a MonarchShape), got {type(structure).__name__}"
            )
        kwargs = {**kwargs, "structure": structure}
    if family.optimal_error is None:
        offered = [f.name for f in families() if f.optimal_error is not None]
        raise ValueError(
            f"structure {family.name!r} has no optimal error independent of its fit ({family.fit_method}); "
            f"structure must be one of {offered}"
        )
    return family.optimal_error(W, **kwargs)
