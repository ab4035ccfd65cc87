"""Kronecker's entry in the structure registry (:mod:`structmat.registry`): by default one variant,
the balanced ``a_shape`` of each layer (series ``kronecker``), or one per given ``a_shapes``; the
budget grows the number of terms."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..checks import check_sequence
from ..palette import PlotStyle
from ..registry import StructureFamily
from .fit import fit_kronecker, kronecker_optimal_error
from .module import Kronecker, Shape2, check_a_shape, kronecker_capacity, kronecker_num_params

# a_shape=None everywhere below: the balanced shape of the layer (balanced_a_shape), as in Kronecker


def _build(in_features: int, out_features: int, rank: int, a_shape: Shape2 | None = None, **kwargs: Any) -> Kronecker:
    return Kronecker(in_features, out_features, a_shape, rank, **kwargs)


def _num_params(in_features: int, out_features: int, rank: int, a_shape: Shape2 | None = None) -> int:
    return kronecker_num_params(*check_a_shape(a_shape, out_features, in_features), rank)


def _rank_capacity(in_features: int, out_features: int, rank: int, a_shape: Shape2 | None = None) -> int:
    return kronecker_capacity(*check_a_shape(a_shape, out_features, in_features), rank)


def _largest_rank(in_features: int, out_features: int, a_shape: Shape2 | None = None) -> int:
    (m1, n1), (m2, n2) = check_a_shape(a_shape, out_features, in_features)
    return min(m1 * n1, m2 * n2)


def _variants(in_features: int, out_features: int, a_shapes: Sequence[Shape2] | None = None) -> list[dict]:
    """One variant per pair ``(m1, n1)`` of ``a_shapes``; default one, ``{}``: the balanced shape."""
    if a_shapes is None:
        return [{}]
    out = []
    for shape in check_sequence("a_shapes", a_shapes):
        try:
            a, _ = check_a_shape(shape, out_features, in_features)
        except ValueError as err:
            raise ValueError(f"a_shapes: {err}") from None
        out.append({"a_shape": a})
    return out


def _zero_init(module: Kronecker) -> None:
    module.B.zero_()  # LoKr's init: A random, B = 0


KRONECKER = StructureFamily(
    name="kronecker",
    label="Kronecker",
    module=Kronecker,
    build=_build,
    num_params=_num_params,
    rank_capacity=_rank_capacity,
    largest_size=_largest_rank,
    variants=_variants,
    variant_options={"a_shapes": None},
    fit=fit_kronecker,
    optimal_error=kronecker_optimal_error,
    zero_init=_zero_init,
    style=PlotStyle("#882255", "h", "--"),  # Tol's wine: the Okabe-Ito colours are all taken
    fit_method="SVD of the rearranged matrix (Van Loan-Pitsianis, optimal)",
    examples=(
        (20, 12, {"a_shape": (3, 4), "rank": 2}),
        (16, 16, {"a_shape": (4, 4), "rank": 1}),
        (8, 6, {"a_shape": (2, 2), "rank": 3, "batch_shape": (2,)}),
    ),
)
