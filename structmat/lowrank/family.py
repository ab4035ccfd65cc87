"""Low rank's entry in the structure registry (:mod:`structmat.registry`)."""

from __future__ import annotations

from typing import Any

from ..palette import palette_style
from ..registry import StructureFamily
from .fit import fit_lowrank, lowrank_optimal_error
from .module import LowRank


def _build(in_features: int, out_features: int, rank: int, **kwargs: Any) -> LowRank:
    return LowRank(in_features, out_features, rank, **kwargs)


def _num_params(in_features: int, out_features: int, rank: int) -> int:
    return rank * (in_features + out_features)


def _rank_capacity(in_features: int, out_features: int, rank: int) -> int:
    return min(rank, in_features, out_features)


def _largest_rank(in_features: int, out_features: int) -> int:
    return min(in_features, out_features)


def _zero_init(module: LowRank) -> None:
    module.B.zero_()  # LoRA's init: A random, B = 0


LOWRANK = StructureFamily(
    name="lowrank",
    label="low rank",
    module=LowRank,
    build=_build,
    num_params=_num_params,
    rank_capacity=_rank_capacity,
    largest_size=_largest_rank,
    fit=fit_lowrank,
    optimal_error=lowrank_optimal_error,
    zero_init=_zero_init,
    style=palette_style(0),
    fit_method="truncated SVD (optimal)",
    examples=((10, 7, {"rank": 3}), (6, 9, {"rank": 2, "batch_shape": (2, 2)})),
)
