"""Model-level MoRe: ``apply_more`` and merge / unmerge / unload / disable / parameter reports."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn

from .. import __version__
from .config import MoReConfig
from .layer import MoReLinear, base_shape
from .targets import TargetSpec, resolve_modules_to_save, resolve_targets

CONFIG_ATTR = "structmat_more_config"


def apply_more(
    model: nn.Module,
    target_modules: TargetSpec = None,
    nblocks: int = 4,
    rank: int = 4,
    dropout: float = 0.0,
    *,
    exclude_modules: TargetSpec = None,
    modules_to_save: str | list[str] | None = "auto",
    config: MoReConfig | None = None,
) -> nn.Module:
    """Make ``model`` MoRe-fine-tunable, in place; returns the same model.

    Every parameter is frozen; each targeted linear layer (``nn.Linear`` or ``Conv1D``) is
    replaced by a :class:`MoReLinear` whose Monarch update starts at zero, so the adapted
    model computes exactly what the base model did. ``modules_to_save`` ("auto": the
    classifier head of a sequence-classification model) stay trainable. Trainable
    parameters: ``rank * (in + out)`` per target (``nblocks`` dividing both sizes).

    Example::

        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
        model = apply_more(model, target_modules=["query", "value"], nblocks=4, rank=1)
        print_trainable_parameters(model)
    """
    if getattr(model, CONFIG_ATTR, None) is not None:
        raise ValueError("model already has a MoRe adapter; unload() it first")
    if config is None:
        config = MoReConfig(
            target_modules=target_modules,
            exclude_modules=exclude_modules,
            modules_to_save=modules_to_save,
            nblocks=nblocks,
            rank=rank,
            dropout=dropout,
        )
    saved = resolve_modules_to_save(model, config.modules_to_save)
    targets = resolve_targets(model, config.target_modules, config.exclude_modules, saved)
    # Build every wrapper before touching the model: a layer that does not fit fails cleanly.
    wrappers = {}
    for name in targets:
        try:
            wrappers[name] = MoReLinear(model.get_submodule(name), config.nblocks, config.rank, config.dropout)
        except ValueError as err:
            raise ValueError(f"cannot adapt layer {name!r}: {err}") from None
    for p in model.parameters():
        p.requires_grad_(False)
    for name, wrapper in wrappers.items():
        _set_submodule(model, name, wrapper)
        wrapper.more.requires_grad_(True)
    for name in saved:
        model.get_submodule(name).requires_grad_(True)
    model_config = getattr(model, "config", None)
    config.resolved_targets = targets
    config.resolved_modules_to_save = saved
    config.base_model_type = getattr(model_config, "model_type", None)
    config.base_model_class = type(model).__name__
    config.target_shapes = {n: list(base_shape(w.base_layer)) for n, w in wrappers.items()}
    config.structmat_version = __version__
    setattr(model, CONFIG_ATTR, config)
    return model


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def more_layers(model: nn.Module) -> dict[str, MoReLinear]:
    """The model's :class:`MoReLinear` layers by dotted name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, MoReLinear)}


def _require_adapter(model: nn.Module) -> dict[str, MoReLinear]:
    layers = more_layers(model)
    if not layers:
        raise ValueError("model has no MoRe adapter (call apply_more or load_adapter first)")
    return layers


def get_adapter_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The adapter's own parameters (Monarch factors), by name, not the modules_to_save."""
    return {n: p for n, p in model.named_parameters() if ".more." in f".{n}"}


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts (shared tensors counted once)."""
    seen: set[int] = set()
    trainable = total = 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return trainable, total


def print_trainable_parameters(model: nn.Module) -> None:
    """Prints ``trainable params: X || all params: Y || trainable%: Z`` (PEFT's format)."""
    trainable, total = count_parameters(model)
    print(f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {100 * trainable / total:.4f}")


def merge(model: nn.Module, safe_merge: bool = False) -> nn.Module:
    """Fold every ``ΔW`` into its base weight (reversible with :func:`unmerge`)."""
    layers = _require_adapter(model)
    if safe_merge:  # check all before changing any
        for name, layer in layers.items():
            if not layer.merged and not bool(layer.merged_weight().isfinite().all()):
                raise ValueError(f"safe_merge: layer {name!r} would get NaN or inf weights; nothing merged")
    for layer in layers.values():
        layer.merge()
    return model


def unmerge(model: nn.Module) -> nn.Module:
    """Restore the base weights exactly as before :func:`merge`."""
    for layer in _require_adapter(model).values():
        layer.unmerge()
    return model


def unload(model: nn.Module) -> nn.Module:
    """Remove the adapter layers without merging (the base model again); assign the result.

    ``modules_to_save`` keep their trained weights.
    """
    for name, layer in _require_adapter(model).items():
        layer.unmerge()
        _set_submodule(model, name, layer.base_layer)
    if hasattr(model, CONFIG_ATTR):
        delattr(model, CONFIG_ATTR)
    return model


def merge_and_unload(model: nn.Module, safe_merge: bool = False) -> nn.Module:
    """Merge ``ΔW`` into the weights and return a plain model (no adapter layers left)."""
    merge(model, safe_merge=safe_merge)
    for name, layer in more_layers(model).items():
        layer._original_weight = None
        _set_submodule(model, name, layer.base_layer)
    if hasattr(model, CONFIG_ATTR):
        delattr(model, CONFIG_ATTR)
    return model


@contextlib.contextmanager
def disable_adapter(model: nn.Module) -> Iterator[nn.Module]:
    """``with disable_adapter(model): ...`` computes the base model's outputs."""
    layers = _require_adapter(model)
    previous = {n: m.disabled for n, m in layers.items()}
    for layer in layers.values():
        if layer.merged:
            raise ValueError("disable_adapter on a merged model: unmerge() it first")
        layer.disabled = True
    try:
        yield model
    finally:
        for n, layer in layers.items():
            layer.disabled = previous[n]
