"""Adapters saved by structmat before MoRe became a PEFT method (folder formats 1 and 2) still load.

Those folders keyed the tensors ``{layer}.blkdiag1`` / ``{layer}.blkdiag2`` (and
``{layer}.init_blkdiag*`` for a projection init, ``{module}.{param}`` for the modules to save)
and their config had structmat's own fields (``resolved_targets``, ``init``, ``modules_to_save=
"auto"``, ...). :func:`config_dict_from_any` turns such a config into today's fields and
:func:`state_from_legacy` the tensors into PEFT's keys, so the rest of the loader sees one format.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

PEFT_PREFIX = "base_model.model."
LEGACY_KEYS = {
    "resolved_targets", "resolved_modules_to_save", "base_model_type", "target_shapes", "init",
}  # fmt: skip


def is_legacy_config(data: dict[str, Any]) -> bool:
    return "resolved_targets" in data or "target_shapes" in data


def config_dict_from_any(data: dict[str, Any], known: set[str]) -> dict[str, Any]:
    """The keyword arguments of today's ``MoReConfig`` (whose fields are ``known``) for a saved
    config dict of any structmat version; keys no version knows are dropped with a warning (PEFT's rule)."""
    data = dict(data)
    if is_legacy_config(data):
        data["target_modules"] = list(data.get("resolved_targets") or data.get("target_shapes") or []) or None
        data["modules_to_save"] = list(data.get("resolved_modules_to_save") or []) or None
        data["init_weights"] = "projection" if data.get("init") == "projection" else True
        for key in LEGACY_KEYS:
            data.pop(key, None)
    unknown = sorted(set(data) - known)
    if unknown:
        warnings.warn(
            f"adapter config keys {unknown} are unknown to this structmat version and are ignored", stacklevel=3
        )
    data["peft_type"] = "MORE"
    return {k: v for k, v in data.items() if k in known}


def state_from_legacy(state: dict[str, torch.Tensor], targets: list[str]) -> dict[str, torch.Tensor]:
    """Tensors of a format-1/2 folder under PEFT's keys (``base_model.model.<layer>.more_update.*``)."""
    out = {}
    layers = set(targets)
    for key, tensor in state.items():
        owner, _, leaf = key.rpartition(".")
        if owner in layers and leaf in ("blkdiag1", "blkdiag2"):
            out[f"{PEFT_PREFIX}{owner}.more_update.{leaf}"] = tensor
        elif owner in layers and leaf in ("init_blkdiag1", "init_blkdiag2"):
            out[f"{PEFT_PREFIX}{owner}.more_init.{leaf.removeprefix('init_')}"] = tensor
        else:
            out[f"{PEFT_PREFIX}{key}"] = tensor
    return out
