"""Approximation error per parameter budget, for each registered structure family, on a target matrix."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from ..checks import check_matrix, check_positive_int, check_sequence
from ..registry import get_structure, parse_label, study_families
from .capacity import choose_structures


@dataclass
class CurvePoint:
    structure: str  # series label, as StructureChoice.structure
    budget: int
    params: int  # parameters the fitted structure really has
    rel_error: float  # achieved ||W - M||_F / ||W||_F (1.0 when nothing fits the budget)
    max_rank: int
    family: str = ""  # registered family name ("" for points made by hand: read from the label)
    hparams: dict[str, Any] = field(default_factory=dict)  # the fitted member
    fit_info: dict[str, Any] = field(default_factory=dict)  # what its fit did (the module's ``fit_info``)


def approximation_curve(
    W: torch.Tensor, budgets: Sequence[int], structures: Sequence[str] | None = None, **options: Any
) -> list[CurvePoint]:
    """Fit every variant of every family at every budget; return the achieved relative errors.

    ``structures``: family names (default: every registered family whose fit is not iterative;
    ``butterfly=True`` adds the butterfly, ``kronecker=False`` leaves Kronecker out).
    ``options``: the families' study options (``nblocks=(2, 4, 8)`` for Monarch, ``a_shapes`` for
    Kronecker, ``butterfly_steps=400`` for the butterfly's fit), see
    :func:`~structmat.analysis.choose_structures`. Each member is fitted once by its family's
    ``fit`` (closed form where the family has one) and its ``fit_error`` reused at every budget
    that picks the same member (the butterfly's one size).
    """
    check_matrix("W", W)
    if W.dim() != 2:
        raise ValueError(f"W must be one matrix (out, in), got shape {tuple(W.shape)}")
    budgets = check_sequence("budgets", budgets)
    for budget in budgets:
        check_positive_int("budgets entries", budget)
    study_plan = study_families(structures, options, include=lambda family: not family.iterative)
    chosen = [family.name for family, _, _ in study_plan]
    fit_options = {family.name: fits for family, _, fits in study_plan}
    variant_options = {k: v for _, variants, _ in study_plan for k, v in variants.items()}
    out_f, in_f = W.shape
    fitted: dict[tuple[str, str], tuple[float, dict]] = {}  # (family, member) -> (fit_error, fit_info)
    points: list[CurvePoint] = []
    for budget in budgets:
        for choice in choose_structures(in_f, out_f, int(budget), chosen, **variant_options):
            if not choice.fits:
                err, info = 1.0, {}
            else:
                key = (choice.family, repr(sorted(choice.hparams.items())))
                if key not in fitted:
                    family = get_structure(choice.family)
                    module = family.fit(W, **choice.hparams, **fit_options[family.name])
                    fitted[key] = (float(module.fit_error), dict(module.fit_info or {}))
                err, info = fitted[key]
            point = CurvePoint(choice.structure, int(budget), choice.params, err, choice.max_rank)
            points.append(replace(point, family=choice.family, hparams=choice.hparams, fit_info=info))
    return points


def family_of(point: CurvePoint) -> str:
    """The family of a point: its ``family`` field, else read from its label (else the label)."""
    if point.family:
        return point.family
    parsed = parse_label(point.structure)
    return point.structure if parsed is None else parsed[0].name


def best_per_family(points: Sequence[CurvePoint]) -> dict[str, dict[int, CurvePoint]]:
    """Family -> budget -> its best variant's point there (lowest error among those that fit),
    families in the order they first appear; a budget where no variant fits is absent."""
    best: dict[str, dict[int, CurvePoint]] = {}
    for p in points:
        at = best.setdefault(family_of(p), {})
        if p.params > 0 and (p.budget not in at or p.rel_error < at[p.budget].rel_error):
            at[p.budget] = p
    return best
