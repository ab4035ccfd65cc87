"""Serving MoRe on LoRA stacks: an exact export to a standard PEFT LoRA folder.

A Monarch update is a product of two block-diagonal factors with a permutation between them,
``M = Lt.T @ R`` (:func:`structmat.monarch.factors.expand_factors`): ``R`` is ``(k*q, in)`` and
``Lt.T`` is ``(out, k*q)``. That is a LoRA with ``lora_A = R`` and ``lora_B = Lt.T`` of rank
``k*q = nblocks * rank`` and scaling 1, equal to the MoRe update up to rounding (no SVD, no
approximation). A low-rank update is already ``B @ A``; any other family (Kronecker) is exported
through an SVD at its largest rank, also exact to rounding.

The cost: the LoRA holds ``nblocks * rank * (in + out)`` numbers per layer, ``nblocks`` times the
MoRe adapter (4x with MoRe's default), because LoRA stores the zeros of the block structure.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch
from peft import LoraConfig
from safetensors.torch import save as save_safetensors
from torch import nn

from ..base import StructuredLinear
from ..monarch.factors import expand_factors
from .api import tuner_of, unwrap_model
from .compat import PEFT_PREFIX
from .folder import CONFIG_NAME, WEIGHTS_NAME, check_path
from .io import adapter_state_dict
from .layer import MoReLinear, check_adapter_name
from .storage import locked_folder, write_atomically


def lora_factors(update: StructuredLinear) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A, B)`` with ``B @ A`` equal to the update's matrix: ``A`` ``(r, in)``, ``B`` ``(out, r)``.

    Two block-diagonal factors (Monarch; low rank as one block) are written out exactly; any other
    family goes through an SVD of its dense matrix at its ``max_rank`` (exact to rounding, since
    the matrix has no larger rank)."""
    factors = update.monarch_factors()
    if factors is not None:
        R, Lt = expand_factors(*(f.detach() for f in factors))  # (k*q, k*p), (k*q, l*s)
        return R[:, : update.in_features], Lt.T[: update.out_features]
    U, S, Vh = torch.linalg.svd(update.to_dense().detach(), full_matrices=False)
    r = update.max_rank
    return (S[:r, None].sqrt() * Vh[:r]).contiguous(), (U[:, :r] * S[:r].sqrt()).contiguous()


def to_lora(model: nn.Module, path: str | os.PathLike, adapter_name: str | None = None) -> Path:
    """Write ``adapter_name`` (default: the active adapter) as a PEFT LoRA folder at ``path``:
    ``PeftModel.from_pretrained(base, path)`` computes what the MoRe model computes (to rounding).

    Per-layer ranks go into ``rank_pattern`` (``nblocks * rank`` for Monarch), ``lora_alpha`` equals
    the rank everywhere (scaling 1), the modules to save are copied. A projection-initialised
    adapter cannot be exported (its base weights are ``W - M``, which a LoRA of the base cannot
    express). Returns ``path``.
    """
    check_path(path)
    inner = unwrap_model(model)
    tuner = tuner_of(inner)
    if adapter_name is not None:
        check_adapter_name(adapter_name)
    name = adapter_name if adapter_name is not None else tuner.active_adapters[0]
    config = tuner.peft_config.get(name)
    if config is None:
        raise ValueError(f"model has no adapter named {name!r}; its adapters: {list(tuner.peft_config)}")
    if config.init_weights == "projection":
        raise ValueError(f"adapter {name!r} is projection-initialised (base weights W - M): it has no LoRA of the base")
    state: dict[str, torch.Tensor] = {}
    ranks: dict[str, int] = {}
    conv1d = set()
    for layer_name, layer in tuner.model.named_modules():
        if not isinstance(layer, MoReLinear) or name not in layer.more_update:
            continue
        A, B = lora_factors(layer.more_update[name])
        ranks[layer_name] = A.shape[0]
        state[f"{PEFT_PREFIX}{layer_name}.lora_A.weight"] = A.contiguous().cpu()
        state[f"{PEFT_PREFIX}{layer_name}.lora_B.weight"] = B.contiguous().cpu()
        if layer.is_conv1d:
            conv1d.add(layer_name)
    if conv1d and len(conv1d) != len(ranks):
        raise ValueError("to_lora needs all adapted layers to be Conv1D or all nn.Linear (PEFT's fan_in_fan_out)")
    for key, t in adapter_state_dict(inner, name).items():  # the modules to save, as MoRe saved them
        if ".more_update." not in key:
            state[key] = t
    lora = LoraConfig(
        r=max(ranks.values()),
        lora_alpha=max(ranks.values()),
        target_modules=sorted(ranks),
        rank_pattern={re.escape(n): r for n, r in ranks.items()},
        alpha_pattern={re.escape(n): r for n, r in ranks.items()},
        modules_to_save=list(config.modules_to_save) if config.modules_to_save else None,
        fan_in_fan_out=bool(conv1d),
        base_model_name_or_path=config.base_model_name_or_path,
        task_type=config.task_type,
    )
    data = lora.to_dict()
    for key, value in data.items():
        if isinstance(value, set):
            data[key] = sorted(value)
    import json

    with locked_folder(path) as root:
        write_atomically(root / WEIGHTS_NAME, save_safetensors(state, metadata={"format": "pt"}))
        write_atomically(root / CONFIG_NAME, json.dumps(data, indent=2, sort_keys=True, default=str).encode())
    return Path(path)
