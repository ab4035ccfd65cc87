"""The trainable update ``ΔW`` of an adapted layer: a member of any registered structure family.

The adapter asks the structure registry (:mod:`structmat.registry`) for what it needs, so a family
registered there is an adapter too: a fresh update for an ``(in, out)`` layer (zero at init by the
family's ``zero_init``, or random for tests), the best approximation of a weight in the family
(``init_weights="projection"``), and its dense ``ΔW``. The settings a family takes are its
``size`` (the config's ``rank``), the config fields it names in ``adapter_options`` (Monarch:
``nblocks``, ``layout``) and the config's ``structure_options`` (Kronecker: ``a_shape``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch.func import functional_call

from ..base import StructuredLinear
from ..registry import get_structure, structures


def hparams(structure: str, settings: Mapping[str, Any]) -> dict[str, Any]:
    """The family's hyper-parameters from adapter settings (``rank``, ``nblocks``, ``layout``,
    ``structure_options``)."""
    family = get_structure(structure)
    hp = dict(settings.get("structure_options") or {})
    if family.size is not None:
        hp[family.size] = settings["rank"]
    for key in family.adapter_options:
        hp[key] = settings[key]
    return hp


def new_update(
    structure: str,
    in_features: int,
    out_features: int,
    settings: Mapping[str, Any],
    *,
    zero: bool,
    device: torch.device,
    dtype: torch.dtype,
) -> StructuredLinear:
    """A trainable update of shape ``(out, in)``: ``zero`` makes it start at 0 (the family's
    ``zero_init``: MoRe's ``blkdiag2 = 0``, LoRA's ``B = 0``), otherwise it is random."""
    family = get_structure(structure)
    hp = hparams(structure, settings)
    build = family.build_update if zero else family.build
    update = build(in_features, out_features, **hp, device=device, dtype=dtype)
    if hasattr(update, "recompute_middle"):  # keep only x for backward (the frozen layer keeps it anyway)
        update.recompute_middle = True
    return update


def projection_update(structure: str, weight: torch.Tensor, settings: Mapping[str, Any]) -> StructuredLinear:
    """The best approximation of ``weight`` ``(out, in)`` in the family (its ``fit``)."""
    update = get_structure(structure).fit(weight, **hparams(structure, settings))
    if hasattr(update, "recompute_middle"):
        update.recompute_middle = True
    return update


def dense(update: StructuredLinear, transform: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """``ΔW`` ``(out, in)``; ``transform`` maps each parameter first (gathering an FSDP2 shard)."""
    if transform is None:
        return update.to_dense()
    params = {name: transform(p) for name, p in update.named_parameters()}
    first = next(iter(params.values()))
    eye = torch.eye(update.in_features, device=first.device, dtype=first.dtype)
    return functional_call(update, params, (eye,)).mT  # rows of eye are e_i: e_i @ M.T is column i of M


def frozen_copy(update: StructuredLinear) -> StructuredLinear:
    """A frozen copy of ``update`` (its values now)."""
    return copy.deepcopy(update).requires_grad_(False)


__all__ = ["dense", "frozen_copy", "hparams", "new_update", "projection_update", "structures"]
