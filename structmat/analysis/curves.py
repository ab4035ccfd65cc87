"""Approximation error per parameter budget, for each structure, on a target matrix."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..butterfly.fit import fit_butterfly
from ..checks import check_matrix, check_positive_int, check_sequence
from ..lowrank.fit import fit_lowrank
from ..monarch.fit import fit_monarch
from .capacity import choose_structures


@dataclass
class CurvePoint:
    structure: str
    budget: int
    params: int  # parameters the fitted structure really has
    rel_error: float  # achieved ||W - M||_F / ||W||_F (1.0 when nothing fits the budget)
    max_rank: int


def approximation_curve(
    W: torch.Tensor,
    budgets: Sequence[int],
    nblocks: tuple[int, ...] = (2, 4, 8),
    butterfly: bool = False,
    butterfly_steps: int = 400,
) -> list[CurvePoint]:
    """Fit every structure family at every budget; return the achieved relative errors.

    Monarch and low rank use their optimal closed-form fits; the butterfly (one size only)
    is fitted iteratively once and repeated at the budgets it fits.
    """
    check_matrix("W", W)
    if W.dim() != 2:
        raise ValueError(f"W must be one matrix (out, in), got shape {tuple(W.shape)}")
    budgets = check_sequence("budgets", budgets)
    for budget in budgets:
        check_positive_int("budgets entries", budget)
    out_f, in_f = W.shape
    points: list[CurvePoint] = []
    bf_error: float | None = None
    for budget in budgets:
        for choice in choose_structures(in_f, out_f, int(budget), nblocks, butterfly):
            if choice.params == 0:
                err = 1.0
            elif choice.structure == "lowrank":
                err = float(fit_lowrank(W, choice.rank).fit_error)
            elif choice.structure == "butterfly":
                if bf_error is None:
                    bf_error = float(
                        fit_butterfly(W, steps=butterfly_steps, lbfgs_steps=50, restarts=2, progress=False).fit_error
                    )
                err = bf_error
            else:
                err = float(fit_monarch(W, choice.nblocks, choice.rank).fit_error)
            points.append(CurvePoint(choice.structure, int(budget), choice.params, err, choice.max_rank))
    return points
