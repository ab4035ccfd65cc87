"""Model-level MoRe: ``apply_more``, named adapters, merge / unmerge / unload / disable, parameter reports.

A model adapted in place carries its adapters' configs in the attribute
``structmat_more_configs`` (adapter name -> :class:`MoReConfig`) and the active adapter's name in
``structmat_active_adapter``; the layers carry the weights (:class:`MoReLinear`,
:class:`ModulesToSaveWrapper`). Every function here accepts the model as the user holds it:
wrapped by ``torch.compile``, ``DistributedDataParallel`` or ``DataParallel`` too.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import warnings
from collections.abc import Iterable, Iterator

import torch
from torch import nn

from .. import __version__
from .config import MoReConfig
from .layer import MoReLinear, base_shape, check_adapter_name, new_update, projection_update
from .saved_modules import ModulesToSaveWrapper
from .targets import TargetSpec, candidate_modules, resolve_modules_to_save, resolve_targets

CONFIGS_ATTR = "structmat_more_configs"
ACTIVE_ATTR = "structmat_active_adapter"
DISABLED_ATTR = "structmat_adapters_disabled"  # True inside ``with disable_adapter(model)``


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside ``torch.compile`` (``_orig_mod``), DDP / DataParallel (``module``) wrappers."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    while True:
        inner = getattr(model, "_orig_mod", None)  # torch.compile's OptimizedModule
        if isinstance(inner, nn.Module):
            model = inner
        elif isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        else:
            return model


def adapter_configs(model: nn.Module) -> dict[str, MoReConfig]:
    """The model's MoRe adapters by name (empty when it has none)."""
    return getattr(unwrap_model(model), CONFIGS_ATTR, None) or {}


def active_adapter(model: nn.Module) -> str:
    """The name of the adapter the model computes with."""
    model = unwrap_model(model)
    require_adapter(model)
    return getattr(model, ACTIVE_ATTR)


def list_adapters(model: nn.Module) -> list[str]:
    """The names of the model's MoRe adapters, in the order they were added."""
    return list(adapter_configs(model))


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
    adapter_name: str = "default",
) -> nn.Module:
    """Make ``model`` MoRe-fine-tunable, in place; returns the same model.

    Every parameter is frozen; each targeted linear layer (``nn.Linear`` or ``Conv1D``) is
    replaced by a :class:`MoReLinear` whose Monarch update starts at zero, so the adapted
    model computes exactly what the base model did. ``modules_to_save`` ("auto": the
    task head of a classification or question-answering model) are trained as copies, the originals
    kept for :func:`disable_adapter`. Trainable parameters: ``rank * (in + out)`` per target
    (``nblocks`` dividing both sizes). ``config`` (a :class:`MoReConfig`) replaces the
    keyword settings and is not modified. More adapters: :func:`add_adapter`.

    Example::

        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
        model = apply_more(model, target_modules=["query", "value"], nblocks=4, rank=1)
        print_trainable_parameters(model)
    """
    if adapter_configs(model):
        raise ValueError(
            f"model already has a MoRe adapter ({list_adapters(model)}); add another with "
            f"add_adapter(model, name, config), or unload() it first"
        )
    if config is None:
        config = MoReConfig(
            target_modules=target_modules,
            exclude_modules=exclude_modules,
            modules_to_save=modules_to_save,
            nblocks=nblocks,
            rank=rank,
            dropout=dropout,
        )
    return _add_adapter(model, adapter_name, config, stacklevel=3)


def add_adapter(model: nn.Module, adapter_name: str, config: MoReConfig) -> nn.Module:
    """Add a MoRe adapter named ``adapter_name`` (``config`` is not modified); the first adapter
    of a model becomes active, later ones stay inactive (and frozen) until :func:`set_adapter`.

    Everything is checked before the model changes: the name, the targets, every layer's shapes.
    Inside ``with disable_adapter(model)`` the new adapter's layers are disabled too.
    """
    return _add_adapter(model, adapter_name, config, stacklevel=3)


def _check_target_spec(name: str, spec: object) -> None:
    """``target_modules`` / ``exclude_modules``: None, a regex string (or ``"all-linear"``), or an
    iterable of module-name strings; anything else raises naming the argument."""
    if spec is None:
        return
    if isinstance(spec, str):
        try:
            re.compile(spec)
        except re.error as err:
            raise ValueError(f"{name}={spec!r} is not a valid regular expression: {err}") from None
        return
    if isinstance(spec, (bytes, nn.Module, torch.Tensor)) or not isinstance(spec, Iterable):
        raise TypeError(
            f"{name} must be a regex string, 'all-linear', a list of module names or None, got {type(spec).__name__}"
        )
    if isinstance(spec, Iterator):  # a generator: read it once here, as a list
        raise TypeError(f"{name} must be a list of module names, got a one-shot {type(spec).__name__}")
    bad = [t for t in spec if not isinstance(t, str)]
    if bad:
        raise TypeError(f"{name} must hold module-name strings, got {bad!r}")


def _add_adapter(
    model: nn.Module,
    adapter_name: str,
    config: MoReConfig,
    stacklevel: int,
    init_factors: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
    *,
    targets: list[str] | None = None,
    modules_to_save: list[str] | None = None,
) -> nn.Module:
    """``init_factors``: for ``init="projection"``, each layer's saved ``M`` instead of a new fit.
    ``targets`` / ``modules_to_save``: exact module names (what a saved adapter was applied to),
    instead of resolving the config's patterns."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(config, MoReConfig):
        raise TypeError(f"config must be a MoReConfig, got {type(config).__name__}")
    _check_target_spec("target_modules", config.target_modules)
    _check_target_spec("exclude_modules", config.exclude_modules)
    check_adapter_name(adapter_name)
    outer, model = model, unwrap_model(model)
    configs = dict(adapter_configs(model))
    if adapter_name in configs:
        raise ValueError(f"model already has an adapter named {adapter_name!r}; delete_adapter() it first")
    if any(layer.merged for layer in more_layers(model).values()):
        raise ValueError("model has a merged adapter; unmerge() it before adding another")
    saved = modules_to_save if modules_to_save is not None else resolve_modules_to_save(model, config.modules_to_save)
    _check_modules_to_save(model, saved)
    if targets is None:
        targets = resolve_targets(model, config.target_modules, config.exclude_modules, saved)
    projection = config.init == "projection"
    projected = [n for n, c in configs.items() if c.init == "projection"]
    if projection and configs:
        raise ValueError(
            f"init='projection' makes the base weights the residual W - M, so it must be the model's only "
            f"adapter; the model has {list(configs)}"
        )
    if projected:
        raise ValueError(
            f"the model's adapter {projected[0]!r} is projection-initialised (its base weights hold W - M); "
            f"a new adapter would sit on that residual: unload() or delete_adapter() it first"
        )
    tied = _shared_weight_owners(model, targets)  # walks every parameter once
    if projection and tied:
        raise ValueError(
            "init='projection' replaces the base weights by W - M, which a tied weight cannot take; "
            f"tied target modules: {sorted(tied)}"
        )
    # Build every update before touching the model: a layer that does not fit fails cleanly.
    updates = {}
    for name in targets:
        base = _base_of(model.get_submodule(name))
        try:
            if projection:
                factors = (init_factors or {}).get(name)
                updates[name] = projection_update(base, config.nblocks, config.rank, config.layout, factors)
            else:
                updates[name] = new_update(base, config.nblocks, config.rank, config.layout)
        except ValueError as err:
            raise ValueError(f"cannot adapt layer {name!r}: {err}") from None
    larger = [n for n, u in updates.items() if u.num_params > u.in_features * u.out_features]
    if larger:
        warnings.warn(
            f"the MoRe update (nblocks={config.nblocks}, rank={config.rank}) has more parameters than the dense "
            f"weight of {', '.join(map(repr, larger))} ({updates[larger[0]].num_params:,d} > "
            f"{updates[larger[0]].in_features * updates[larger[0]].out_features:,d} for the first): a smaller rank "
            f"(or fine-tuning the layer itself) is cheaper",
            stacklevel=stacklevel,
        )
    for name, mods in tied.items():
        warnings.warn(
            f"target module {name!r} shares its weight with {', '.join(map(repr, mods))} (tied weights): "
            f"merging gives {name!r} its own merged weight and leaves the others unchanged",
            stacklevel=stacklevel,
        )

    first = not configs
    if first:
        for p in model.parameters():
            p.requires_grad_(False)
        if callable(getattr(type(model), "save_pretrained", None)):
            model.save_pretrained = _refuse_save_pretrained  # an instance attribute; removed by unload
    disabled = bool(getattr(model, DISABLED_ATTR, False))
    for name, update in updates.items():
        layer = model.get_submodule(name)
        if isinstance(layer, MoReLinear):
            layer.add_adapter(
                adapter_name, config.nblocks, config.rank, config.dropout, monarch=update,
                dropout_position=config.dropout_position, projection=projection,
            )  # fmt: skip
        else:
            wrapper = MoReLinear(
                layer, dropout=config.dropout, adapter_name=adapter_name, monarch=update,
                dropout_position=config.dropout_position, projection=projection,
            )  # fmt: skip
            wrapper.disabled = disabled
            _set_submodule(model, name, wrapper)
    for name in saved:
        module = model.get_submodule(name)
        if isinstance(module, ModulesToSaveWrapper):
            module.add_adapter(adapter_name)
        else:
            wrapper = ModulesToSaveWrapper(module, adapter_name)
            wrapper.disabled = disabled
            _set_submodule(model, name, wrapper)
    model_config = getattr(model, "config", None)
    configs[adapter_name] = dataclasses.replace(
        config,
        resolved_targets=list(targets),
        resolved_modules_to_save=list(saved),
        base_model_type=getattr(model_config, "model_type", None),
        base_model_class=type(model).__name__,
        base_model_name_or_path=config.base_model_name_or_path or _name_or_path(model),
        task_type=config.task_type or _task_type(model),
        num_labels=getattr(model_config, "num_labels", None) if _task_type(model) in ("SEQ_CLS", "TOKEN_CLS") else None,
        target_shapes={n: list(base_shape(_base_of(model.get_submodule(n)))) for n in targets},
        structmat_version=__version__,
    )
    setattr(model, CONFIGS_ATTR, configs)
    if first:
        setattr(model, ACTIVE_ATTR, adapter_name)
    set_adapter(model, getattr(model, ACTIVE_ATTR))  # the active adapter alone is trainable
    return outer


def _check_modules_to_save(model: nn.Module, saved: list[str]) -> None:
    """A module to save is copied per adapter: it must not hold another adapter's layers (their
    copies would be saved under wrapper-internal names that no model has)."""
    for name in saved:
        module = model.get_submodule(name)
        if isinstance(module, ModulesToSaveWrapper):
            continue
        inside = [n for n, m in module.named_modules() if isinstance(m, (MoReLinear, ModulesToSaveWrapper))]
        if inside:
            where = ", ".join(repr(f"{name}.{n}" if n else name) for n in inside[:3])
            raise ValueError(
                f"modules_to_save entry {name!r} contains adapter layers ({where}) of another adapter; "
                f"save a module without them, or exclude those layers from that adapter's target_modules"
            )


def _refuse_save_pretrained(*args, **kwargs):
    """``model.save_pretrained`` of a model carrying MoRe adapters (see :func:`apply_more`)."""
    raise ValueError(
        "this model carries MoRe adapters: save_pretrained would write its weights under the adapter layers' "
        "names, and from_pretrained would re-initialise those layers. Save the adapter with "
        "structmat.adapters.save_adapter(model, path) (load it with load_adapter or from_pretrained), or a plain "
        "merged model with merge_and_unload(model).save_pretrained(path); train with MoReTrainer, whose "
        "checkpoints hold the adapter"
    )


def _base_of(layer: nn.Module) -> nn.Module:
    return layer.base_layer if isinstance(layer, MoReLinear) else layer


def _name_or_path(model: nn.Module) -> str | None:
    return getattr(getattr(model, "config", None), "_name_or_path", None) or None


_TASK_TYPES = {  # transformers class-name suffix -> PEFT's TaskType
    "ForSequenceClassification": "SEQ_CLS",
    "ForTokenClassification": "TOKEN_CLS",
    "ForQuestionAnswering": "QUESTION_ANS",
    "ForCausalLM": "CAUSAL_LM",
    "ForConditionalGeneration": "SEQ_2_SEQ_LM",
}


def _task_type(model: nn.Module) -> str | None:
    return next((t for suffix, t in _TASK_TYPES.items() if type(model).__name__.endswith(suffix)), None)


def _storage_key(t: torch.Tensor) -> tuple[str, int]:
    """What tied tensors have in common: their storage, or (meta tensors, which have none, and
    empty ones) the tensor object itself."""
    ptr = 0 if t.device.type == "meta" else t.untyped_storage().data_ptr()
    return ("storage", ptr) if ptr else ("object", id(t))


def _shared_weight_owners(model: nn.Module, targets: list[str]) -> dict[str, list[str]]:
    """For each target whose weight shares storage with a parameter of another module: those
    modules' names."""
    owners: dict[tuple[str, int], list[str]] = {}
    for name, module in candidate_modules(model):
        for p in module.parameters(recurse=False):
            owners.setdefault(_storage_key(p), []).append(name)
        if isinstance(module, MoReLinear):  # its base layer's weight, under the wrapper's name
            owners.setdefault(_storage_key(module.base_layer.weight), []).append(name)
    shared = {}
    for name in targets:
        weight = _base_of(model.get_submodule(name)).weight
        others = [o for o in owners.get(_storage_key(weight), []) if o != name]
        if others:
            shared[name] = list(dict.fromkeys(others))
    return shared


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def more_layers(model: nn.Module) -> dict[str, MoReLinear]:
    """The model's :class:`MoReLinear` layers by dotted name."""
    return {n: m for n, m in unwrap_model(model).named_modules() if isinstance(m, MoReLinear)}


def saved_modules(model: nn.Module) -> dict[str, ModulesToSaveWrapper]:
    """The model's :class:`ModulesToSaveWrapper` modules by dotted name."""
    return {n: m for n, m in unwrap_model(model).named_modules() if isinstance(m, ModulesToSaveWrapper)}


def require_adapter(model: nn.Module) -> dict[str, MoReLinear]:
    layers = more_layers(model)
    if not layers:
        raise ValueError("model has no MoRe adapter (call apply_more or load_adapter first)")
    return layers


def _require_name(model: nn.Module, adapter_name: str) -> None:
    names = list_adapters(model)
    if adapter_name not in names:
        raise ValueError(f"model has no adapter named {adapter_name!r}; its adapters: {names}")


def set_adapter(model: nn.Module, adapter_name: str) -> nn.Module:
    """Compute with ``adapter_name`` (its Monarch updates and its copies of the saved modules);
    only that adapter is trainable afterwards."""
    model = unwrap_model(model)
    _require_name(model, adapter_name)
    layers = more_layers(model)
    merged = {layer.merged_adapter for layer in layers.values()} - {None}
    if merged and merged != {adapter_name}:
        raise ValueError(f"adapter {merged.pop()!r} is merged into the weights; unmerge() before switching")
    for layer in layers.values():
        layer.set_adapter(adapter_name)
        for name, monarch in layer.more.items():
            monarch.requires_grad_(name == adapter_name)
    for wrapper in saved_modules(model).values():
        wrapper.set_adapter(adapter_name)
        for name, copy in wrapper.modules_to_save.items():
            copy.requires_grad_(name == adapter_name)
    setattr(model, ACTIVE_ATTR, adapter_name)
    return model


def delete_adapter(model: nn.Module, adapter_name: str) -> nn.Module:
    """Remove ``adapter_name``'s weights, its copies of the modules to save and its config.

    Deleting the last adapter gives the base model back, the original modules to save included
    (unlike :func:`unload`, which keeps the active adapter's trained copies)."""
    model = unwrap_model(model)
    _require_name(model, adapter_name)
    configs = dict(adapter_configs(model))
    layers = more_layers(model)
    if any(layer.merged_adapter == adapter_name for layer in layers.values()):
        raise ValueError(f"adapter {adapter_name!r} is merged into the weights; unmerge() it first")
    if len(configs) == 1:
        return _remove_adapters(model, merge_first=False, trained_copies=False)
    for layer in layers.values():
        if adapter_name in layer.more:
            layer.delete_adapter(adapter_name)
    for wrapper in saved_modules(model).values():
        if adapter_name in wrapper.modules_to_save:
            wrapper.delete_adapter(adapter_name)
    del configs[adapter_name]
    setattr(model, CONFIGS_ATTR, configs)
    if getattr(model, ACTIVE_ATTR) == adapter_name:
        set_adapter(model, next(iter(configs)))
    return model


def get_adapter_parameters(model: nn.Module, adapter_name: str | None = None) -> dict[str, nn.Parameter]:
    """An adapter's own parameters (its Monarch factors; default: the active adapter's), by name.
    The copies of the modules to save are not included."""
    model = unwrap_model(model)
    name = adapter_name if adapter_name is not None else getattr(model, ACTIVE_ATTR, None)
    return {n: p for n, p in model.named_parameters() if f".more.{name}." in f".{n}"}


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts (shared tensors counted once)."""
    seen: set[int] = set()
    trainable = total = 0
    for p in unwrap_model(model).parameters():
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
    """Fold the active adapter's ``ΔW`` into every adapted layer (reversible with :func:`unmerge`).

    A base weight tied to other modules is not written to: the layer gets a merged copy. Refused
    inside ``with disable_adapter(model)`` (the block computes the base model; a merge there would
    make it compute neither that nor the adapted model).
    """
    if not isinstance(safe_merge, bool):
        raise TypeError(f"safe_merge must be True or False, got {safe_merge!r}")
    layers = require_adapter(model)
    _require_enabled(model, "merge")
    if safe_merge:  # check all before changing any
        for name, layer in layers.items():
            if layer.merged or layer.active_adapter not in layer.more:
                continue
            if not bool(layer.merged_weight().isfinite().all()):
                raise ValueError(f"safe_merge: layer {name!r} would get NaN or inf weights; nothing merged")
    for layer in layers.values():
        if layer.active_adapter in layer.more:
            layer.merge()
    return model


def unmerge(model: nn.Module) -> nn.Module:
    """Restore the base weights exactly as before :func:`merge`."""
    for layer in require_adapter(model).values():
        layer.unmerge()
    return model


def unload(model: nn.Module) -> nn.Module:
    """Remove the adapter layers without merging (the base model again); assign the result.

    The modules to save keep the active adapter's trained copy (as PEFT's ``unload``); to get
    the original modules back, :func:`delete_adapter` every adapter.
    """
    return _remove_adapters(model, merge_first=False)


def merge_and_unload(model: nn.Module, safe_merge: bool = False) -> nn.Module:
    """Merge the active adapter into the weights and return a plain model (no adapter layers),
    whose modules to save are the active adapter's trained copies.

    Where a merged layer's weight was tied to another module (``lm_head`` and the input
    embeddings), the merged model has them untied and its config says so
    (``tie_word_embeddings=False``), so that it saves and loads as what it computes. A
    parametrized weight (``weight_norm``, ...) becomes a plain weight holding ``W + ΔW``.
    Refused inside ``with disable_adapter(model)`` (see :func:`merge`).
    """
    merge(model, safe_merge=safe_merge)
    return _remove_adapters(model, merge_first=True)


def _require_enabled(model: nn.Module, what: str) -> None:
    if getattr(unwrap_model(model), DISABLED_ATTR, False):
        raise ValueError(
            f"{what} inside `with disable_adapter(model)`: the model computes the base model there; "
            f"{what} after the block"
        )


def _remove_adapters(model: nn.Module, merge_first: bool, trained_copies: bool = True) -> nn.Module:
    """Put the base layers back (merged or not); the modules to save become the active adapter's
    trained copies (``trained_copies``) or the originals."""
    outer, model = model, unwrap_model(model)
    layers = require_adapter(model)
    tied_before = _tied_embeddings(model)
    for name, layer in layers.items():
        if not merge_first:
            layer.unmerge()
            for adapter in list(layer.more_init):
                layer.restore_base_weight(adapter)
        elif layer.merged:
            layer.fold_merge()
        _set_submodule(model, name, layer.base_layer)
    for name, wrapper in saved_modules(model).items():
        copies, active = wrapper.modules_to_save, wrapper.active_adapter
        keep = copies[active] if trained_copies and active in copies else wrapper.original_module
        _set_submodule(model, name, keep)
    for attr in (CONFIGS_ATTR, ACTIVE_ATTR, DISABLED_ATTR):
        if hasattr(model, attr):
            delattr(model, attr)
    model.__dict__.pop("save_pretrained", None)  # the refusal set by apply_more
    if tied_before and not _tied_embeddings(model):
        _untie_config(model)
    return outer


def _tied_embeddings(model: nn.Module) -> bool:
    """Whether the output head shares its weight with the input embeddings (for an adapted
    head: its original weight, also while merged)."""
    try:
        inp, out = model.get_input_embeddings(), model.get_output_embeddings()
    except (AttributeError, NotImplementedError):
        return False
    if isinstance(out, MoReLinear):
        out_weight = out.unmerged_weight if out.merged else out.base_layer.weight
    elif isinstance(out, ModulesToSaveWrapper):
        out_weight = getattr(out.original_module, "weight", None)
    else:
        out_weight = getattr(out, "weight", None)
    in_weight = getattr(inp, "weight", None)
    if not isinstance(out_weight, torch.Tensor) or not isinstance(in_weight, torch.Tensor):
        return False
    return out_weight.untyped_storage().data_ptr() == in_weight.untyped_storage().data_ptr()


def _untie_config(model: nn.Module) -> None:
    config = getattr(model, "config", None)
    if config is None:
        return
    configs = [config]
    if hasattr(config, "get_text_config"):
        configs.append(config.get_text_config())
    for c in configs:
        if getattr(c, "tie_word_embeddings", False):
            c.tie_word_embeddings = False
    warnings.warn(
        "the merged output head no longer shares its weight with the input embeddings; the model's "
        "config now has tie_word_embeddings=False so that save_pretrained/from_pretrained keep them apart",
        stacklevel=3,
    )


@contextlib.contextmanager
def disable_adapter(model: nn.Module) -> Iterator[nn.Module]:
    """``with disable_adapter(model): ...`` computes the base model's outputs: no Monarch update,
    and the original of every module to save (a classifier head).

    Inside the block, adapters added (:func:`add_adapter`, :func:`load_adapter`) are disabled too,
    and :func:`merge` / :func:`merge_and_unload` are refused."""
    inner = unwrap_model(model)
    layers = require_adapter(inner)
    wrappers = saved_modules(inner)
    if any(layer.merged for layer in layers.values()):
        raise ValueError("disable_adapter on a merged model: unmerge() it first")
    was_disabled = bool(getattr(inner, DISABLED_ATTR, False))
    previous = {id(m): (m, m.disabled) for m in (*layers.values(), *wrappers.values())}
    for module in (*layers.values(), *wrappers.values()):
        module.disabled = True
    setattr(inner, DISABLED_ATTR, True)
    try:
        yield model
    finally:
        for module in (*more_layers(inner).values(), *saved_modules(inner).values()):
            module.disabled = previous[id(module)][1] if id(module) in previous else was_disabled  # added inside
        if adapter_configs(inner):
            setattr(inner, DISABLED_ATTR, was_disabled)
