"""The butterfly's entry in the structure registry (:mod:`structmat.registry`): one size per
layer (``2 n log2 n`` parameters, ``n`` the next power of two), fitted iteratively."""

from __future__ import annotations

from typing import Any

import torch

from ..checks import check_positive_int
from ..palette import palette_style
from ..registry import StructureFamily
from .fit import fit_butterfly
from .module import Butterfly, next_power_of_two


def _build(in_features: int, out_features: int, **kwargs: Any) -> Butterfly:
    kwargs.setdefault("init", "randn")  # a generic member (rank and capacity studies)
    return Butterfly(in_features, out_features, **kwargs)


def _num_params(in_features: int, out_features: int) -> int:
    n = next_power_of_two(max(in_features, out_features, 2))
    return 2 * n * (n.bit_length() - 1)


def _rank_capacity(in_features: int, out_features: int) -> int:
    return min(in_features, out_features)


def _fit(W: torch.Tensor, butterfly_steps: int = 400) -> Butterfly:
    """The studies' butterfly fit: ``butterfly_steps`` Adam steps, 50 L-BFGS steps, 2 starts."""
    check_positive_int("butterfly_steps", butterfly_steps)
    return fit_butterfly(W, steps=butterfly_steps, lbfgs_steps=50, restarts=2, progress=False)


def _zero_init(module: Butterfly) -> None:
    last = module.block_orders()[-1][-1]  # the factor applied last: the product is 0, the others train
    module.twiddle[..., last, :, :, :] = 0


BUTTERFLY = StructureFamily(
    name="butterfly",
    label="butterfly",
    module=Butterfly,
    build=_build,
    num_params=_num_params,
    rank_capacity=_rank_capacity,
    size=None,
    fit=_fit,
    fit_options={"butterfly_steps": 400},
    iterative=True,
    zero_init=_zero_init,
    style=palette_style(6),
    fit_method="Adam + L-BFGS, best of 2 starts (iterative, not guaranteed optimal)",
    examples=((16, 16, {}), (11, 6, {}), (8, 6, {"batch_shape": (2, 3)})),
)
