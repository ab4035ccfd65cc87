"""Monarch's entry in the structure registry (:mod:`structmat.registry`): MoRe shapes, one
variant per ``nblocks``, the block rank grown by the budget."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..checks import check_positive_int, check_sequence
from ..palette import PlotStyle, palette_style
from ..registry import StructureFamily
from .fit import fit_monarch, monarch_optimal_error
from .module import Monarch
from .structure import MonarchShape

_STYLE_INDEX = {1: 1, 2: 2, 4: 3, 8: 4, 16: 5}  # nblocks -> palette entry, the same in every figure


def _build(in_features: int, out_features: int, nblocks: int, rank: int, **kwargs: Any) -> Monarch:
    return Monarch(in_features, out_features, nblocks, rank, **kwargs)


def _num_params(in_features: int, out_features: int, nblocks: int, rank: int) -> int:
    st = MonarchShape.for_more(in_features, out_features, nblocks, rank)
    return nblocks * rank * (st.p + st.s)


def _rank_capacity(in_features: int, out_features: int, nblocks: int, rank: int) -> int:
    return MonarchShape.for_more(in_features, out_features, nblocks, rank).rank_capacity


def _variants(in_features: int, out_features: int, nblocks: Sequence[int] = (2, 4, 8)) -> list[dict[str, int]]:
    """One variant per ``nblocks``; an ``nblocks`` that leaves a block with only padding has no member."""
    out = []
    for n in check_sequence("nblocks", nblocks):
        check_positive_int("nblocks", n)
        try:
            MonarchShape.largest_useful_rank(in_features, out_features, n)
        except ValueError:
            continue
        out.append({"nblocks": n})
    return out


def _style(variant: Mapping[str, Any]) -> PlotStyle | None:
    if "nblocks" not in variant:  # the family as a whole (its best nblocks): apart from Kronecker's wine
        return palette_style(_STYLE_INDEX[1])
    index = _STYLE_INDEX.get(variant["nblocks"])
    return None if index is None else palette_style(index)


def _zero_init(module: Monarch) -> None:
    module.blkdiag2.zero_()  # MoRe's init: blkdiag1 random, blkdiag2 = 0


MONARCH = StructureFamily(
    name="monarch",
    label="Monarch",
    module=Monarch,
    build=_build,
    num_params=_num_params,
    rank_capacity=_rank_capacity,
    largest_size=MonarchShape.largest_useful_rank,
    variants=_variants,
    variant_options={"nblocks": (2, 4, 8)},
    fit=fit_monarch,
    optimal_error=monarch_optimal_error,
    zero_init=_zero_init,
    style=_style,
    fit_method="SVD of every block (optimal)",
    shape_type=MonarchShape,
    adapter_options=("nblocks", "layout"),
    examples=(
        (16, 16, {"nblocks": 4, "rank": 2}),
        (21, 30, {"nblocks": 4, "rank": 3}),
        (12, 8, {"nblocks": 2, "rank": 2, "batch_shape": (3,)}),
    ),
)
