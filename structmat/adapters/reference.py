"""Import adapters trained with the MoRe reference code (SprocketLab/sparse_matrix_fine_tuning).

The reference saves ``torch.save`` of its trainable parameters: for each adapted linear layer
``<path>.blkdiag1`` ``(nblocks, blk_r, ceil(in/nblocks))`` and ``<path>.blkdiag2``
``(nblocks, ceil(ceil(in/nblocks) * out / in), blk_r)`` (its ``MonarchLinear`` sits where the
``nn.Linear`` was), plus whatever else was trained in full (a classifier head). The factors use
the multiply convention structmat uses, so they mean the same matrix here.

:func:`import_reference_checkpoint` reads such a file with ``torch.load(weights_only=True)``
(never a full unpickle), checks everything against the model before touching it, and applies
a MoRe adapter with the reference's sizes (``layout="reference"``) and dropout placement
(``dropout_position="output"``). Anything it does not understand is refused with a clear error.
"""

from __future__ import annotations

import os
import pickle

import torch
from torch import nn

from ..monarch.structure import MonarchShape
from .api import adapter_configs, apply_more, more_layers, unwrap_model
from .config import MoReConfig
from .layer import base_shape, check_adapter_name
from .targets import is_linear

FACTORS = ("blkdiag1", "blkdiag2")
# module-path prefixes the reference's wrappers add (DDP, PEFT-style wrappers, pyreft's "model."),
# stripped one at a time only while a key's module is not the model's own
WRAPPER_PREFIXES = ("module.", "base_model.model.", "model.")
# trainable extras of reference options structmat does not implement
UNSUPPORTED = {"scaler": "the reference's output scaler", "blkdiag_mult": "the reference's multiplicative factor"}


def read_reference_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The name -> tensor dict in a reference checkpoint; refuses anything but that.

    Loaded with ``torch.load(..., weights_only=True)``: a pickle holding code or objects other
    than tensors and plain containers raises before anything is built from it.
    """
    if not isinstance(path, (str, os.PathLike)) or isinstance(path, bytes):
        raise TypeError(f"path must be a file path (str or os.PathLike), got {type(path).__name__}")
    if not os.path.isfile(path):
        raise ValueError(f"path {str(path)!r} is not a file (a reference checkpoint written by torch.save)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as err:
        raise ValueError(
            f"{str(path)!r} is not a tensors-only checkpoint; it was refused without unpickling it "
            f"(torch.load weights_only=True): {str(err).splitlines()[0]}"
        ) from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # a common wrapping
    if not isinstance(state, dict) or not state:
        raise ValueError(f"{str(path)!r} must hold a non-empty dict of parameter name -> tensor, got {type(state)}")
    bad = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(f"{str(path)!r} holds entries that are not name -> tensor: {bad[:5]}")
    return state


def _module_names(model: nn.Module) -> set[str]:
    return {name for name, _ in model.named_modules()}


def _strip_prefix(key: str, names: set[str]) -> str:
    """``key`` without the wrapper prefixes that make it miss the model's own names."""
    owner = key.rpartition(".")[0]
    while owner and owner not in names:
        for prefix in WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key, owner = key[len(prefix) :], owner[len(prefix) :]
                break
        else:
            break
    return key


def import_reference_checkpoint(
    model: nn.Module, path: str | os.PathLike, *, dropout: float = 0.0, adapter_name: str = "default"
) -> nn.Module:
    """Apply to ``model`` the MoRe adapter stored in a reference checkpoint file ``path``.

    ``model`` is the base model (no adapter yet). Layers with factors in the file get a MoRe
    adapter with those factors; other trained tensors (a head) become ``modules_to_save``.
    ``nblocks`` and the block rank are read off the factors; the Monarch sizes are the
    reference's (``layout="reference"``; ours when they coincide), the dropout placement its
    ``"output"``. A tensor of the frozen base (``<layer>.dense``, a layer's bias) is accepted
    only when it equals the model's. Returns ``model``.
    """
    inner = unwrap_model(model)
    check_adapter_name(adapter_name)
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be a number in [0, 1), got {dropout!r}")
    state = read_reference_checkpoint(path)
    if adapter_configs(inner):
        raise ValueError("model already has an adapter; import a reference checkpoint into the base model")
    names = _module_names(inner)
    state = {_strip_prefix(k, names): v for k, v in state.items()}
    where = repr(str(path))

    problems: list[str] = []
    layers: dict[str, dict[str, torch.Tensor]] = {}
    extras: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        owner, _, leaf = key.rpartition(".")
        for name, what in UNSUPPORTED.items():
            if name in key.split("."):
                problems.append(f"{key!r} belongs to {what}, which structmat does not implement")
        if leaf in FACTORS:
            layers.setdefault(owner, {})[leaf] = tensor
        else:
            extras[key] = tensor
    shapes: dict[str, tuple[int, int, str]] = {}
    for owner, factors in sorted(layers.items()):
        module = inner.get_submodule(owner) if owner in names else None
        if module is None or not is_linear(module):
            problems.append(f"{owner!r}: the model has no linear layer there")
            continue
        if set(factors) != set(FACTORS):
            problems.append(f"{owner!r}: has {sorted(factors)}, needs both blkdiag1 and blkdiag2")
            continue
        w1, w2 = factors["blkdiag1"], factors["blkdiag2"]
        if w1.dim() != 3 or w2.dim() != 3 or not w1.is_floating_point() or w1.dtype != w2.dtype:
            problems.append(f"{owner!r}: factors must be 3-D float tensors of one dtype, got {w1.dtype} {w2.dtype}")
            continue
        in_f, out_f = base_shape(module)
        nblocks, rank = w1.shape[0], w1.shape[1]
        found = None
        for layout in ("structmat", "reference"):
            try:
                st = MonarchShape.for_more(in_f, out_f, nblocks, rank, layout)
            except ValueError:
                continue
            if (st.k, st.q, st.p) == tuple(w1.shape) and (st.l, st.s, st.r) == tuple(w2.shape):
                found = layout
                break
        if found is None:
            problems.append(
                f"{owner!r} (in={in_f}, out={out_f}): factors {tuple(w1.shape)} / {tuple(w2.shape)} are not "
                f"MoRe factors of this layer for nblocks={nblocks}, rank={rank} in either layout"
            )
            continue
        shapes[owner] = (nblocks, rank, found)
    if len({(n, r) for n, r, _ in shapes.values()}) > 1:
        problems.append(
            f"the layers use different (nblocks, rank): {sorted(set((n, r) for n, r, _ in shapes.values()))}"
        )
    params = dict(inner.named_parameters())
    to_save: set[str] = set()
    for key, tensor in extras.items():
        owner, _, leaf = key.rpartition(".")
        if owner in layers or owner in shapes:
            base = inner.get_submodule(owner)
            frozen = {"dense": base.weight, "weight": base.weight, "bias": base.bias}.get(leaf)
            if frozen is None or tuple(frozen.shape) != tuple(tensor.shape) or not torch.equal(frozen.cpu(), tensor):
                problems.append(f"{key!r} changes the frozen base layer {owner!r}; a MoRe adapter keeps it as it is")
        elif key not in params:
            problems.append(f"{key!r}: the model has no such parameter")
        elif tuple(params[key].shape) != tuple(tensor.shape):
            problems.append(f"{key!r}: shape {tuple(tensor.shape)}, the model's is {tuple(params[key].shape)}")
        else:
            to_save.add(owner)
    if not shapes and not problems:
        problems.append("it holds no MoRe factors (<layer>.blkdiag1 / <layer>.blkdiag2)")
    if problems:
        raise ValueError(f"cannot import the reference checkpoint {where}: " + "; ".join(problems))

    nblocks, rank, _ = next(iter(shapes.values()))
    layouts = {layout for _, _, layout in shapes.values()}
    config = MoReConfig(
        target_modules=sorted(shapes),
        modules_to_save=sorted(to_save),
        nblocks=nblocks,
        rank=rank,
        dropout=dropout,
        dropout_position="output",
        layout="reference" if "reference" in layouts else "structmat",
    )
    apply_more(model, config=config, adapter_name=adapter_name)
    wrapped = more_layers(inner)
    with torch.no_grad():
        for owner, factors in layers.items():
            monarch = wrapped[owner].more_update[adapter_name]
            for leaf in FACTORS:
                target = getattr(monarch, leaf)
                target.copy_(factors[leaf].to(device=target.device, dtype=target.dtype))
        for key, tensor in extras.items():
            owner, _, leaf = key.rpartition(".")
            wrapper = inner.get_submodule(owner)
            if owner in to_save and hasattr(wrapper, "modules_to_save"):
                target = wrapper.modules_to_save[adapter_name].get_parameter(leaf)
                target.copy_(tensor.to(device=target.device, dtype=target.dtype))
    return model


__all__ = ["import_reference_checkpoint", "read_reference_checkpoint"]
