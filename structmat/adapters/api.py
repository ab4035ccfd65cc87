"""The functional API: ``apply_more(model)`` in place, and functions that take the model as the user
holds it (adapted in place, a ``PeftModel``, or wrapped by ``torch.compile`` / DDP).

``apply_more`` does what ``peft.inject_adapter_in_model`` and transformers' ``model.add_adapter``
do: the model keeps its class and gains MoRe layers (``model.peft_config`` holds the configs). A
transformers model is then marked as carrying a PEFT adapter, so its own ``save_pretrained``
saves the adapter only, ``load_adapter`` / ``set_adapter`` work, and the ``Trainer`` writes
adapter-only checkpoints. Everything here delegates to :class:`~structmat.adapters.MoReModel`
(PEFT's tuner), so a model adapted in place and a ``PeftModel`` behave the same.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from peft import PeftModel
from peft.tuners.tuners_utils import BaseTunerLayer, cast_adapter_dtype
from peft.utils.other import AuxiliaryTrainingWrapper
from torch import nn

from .config import MoReConfig
from .layer import MoReLinear, check_adapter_name
from .model import MoReModel
from .targets import TargetSpec, check_target_spec, resolve_modules_to_save

DISABLED_ATTR = "_structmat_adapters_disabled"  # True inside ``with disable_adapter(model)``


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside ``torch.compile`` (``_orig_mod``) and DDP / DataParallel (``module``) wrappers."""
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


def tuner_of(model: nn.Module) -> MoReModel:
    """The :class:`MoReModel` of ``model``: a ``PeftModel``'s, itself, or a view of the MoRe layers
    of a model adapted in place (``ValueError`` when it has none)."""
    model = unwrap_model(model)
    if isinstance(model, PeftModel):
        model = model.base_model
    if isinstance(model, MoReModel):
        return model
    return MoReModel.view(model)


def base_of(model: nn.Module) -> nn.Module:
    """The model that carries the adapter layers (inside a ``PeftModel``: its base model)."""
    model = unwrap_model(model)
    if isinstance(model, PeftModel):
        model = model.base_model
    return model.model if isinstance(model, MoReModel) else model


def adapter_configs(model: nn.Module) -> dict[str, MoReConfig]:
    """The model's MoRe adapters by name (empty when it has none)."""
    try:
        configs = tuner_of(model).peft_config
    except ValueError:
        return {}
    return {n: c for n, c in configs.items() if isinstance(c, MoReConfig)}


def list_adapters(model: nn.Module) -> list[str]:
    """The names of the model's MoRe adapters, in the order they were added."""
    return list(adapter_configs(model))


def active_adapter(model: nn.Module) -> str | list[str]:
    """The adapter the model computes with (a list when several are active at once)."""
    active = tuner_of(model).active_adapter
    return active[0] if isinstance(active, list) and len(active) == 1 else active


def more_layers(model: nn.Module) -> dict[str, MoReLinear]:
    """The model's :class:`MoReLinear` layers by dotted name (relative to the model that carries them)."""
    return {n: m for n, m in base_of(model).named_modules() if isinstance(m, MoReLinear)}


def apply_more(
    model: nn.Module,
    target_modules: TargetSpec = None,
    nblocks: int = 4,
    rank: int = 4,
    dropout: float = 0.0,
    *,
    exclude_modules: TargetSpec = None,
    modules_to_save: str | list[str] | None = "auto",
    structure: str = "monarch",
    config: MoReConfig | None = None,
    adapter_name: str = "default",
    autocast_adapter_dtype: bool = True,
) -> nn.Module:
    """Make ``model`` MoRe-fine-tunable, in place; returns the same model.

    Every parameter is frozen; each targeted linear layer (``nn.Linear``, ``Conv1D``, a
    bitsandbytes or torchao quantized linear layer) becomes a :class:`MoReLinear` whose update
    starts at zero, so the adapted model computes exactly what the base model did.
    ``modules_to_save="auto"``: the task head of a classification or question-answering model
    (``classifier``, ``score``, ``qa_outputs``), trained as a copy (PEFT's wrapper). ``config`` (a
    :class:`MoReConfig`) replaces the keyword settings and is not modified. Adapter weights stay
    float32 on a half-precision model (``autocast_adapter_dtype``, as PEFT). More adapters:
    :func:`add_adapter`; the same through PEFT: ``peft.get_peft_model(model, MoReConfig(...))``.

    Example::

        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
        model = apply_more(model, target_modules=["query", "value"], nblocks=4, rank=1)
        print_trainable_parameters(model)
    """
    inner = unwrap_model(model)
    if isinstance(inner, (PeftModel, MoReModel)) or adapter_configs(inner):
        raise ValueError(
            f"model already has a MoRe adapter ({list_adapters(inner) or 'a PeftModel'}); add another with "
            f"add_adapter(model, name, config), or unload() it first"
        )
    check_adapter_name(adapter_name)
    if config is None:
        saved = resolve_modules_to_save(inner, modules_to_save) if modules_to_save == "auto" else modules_to_save
        config = MoReConfig(
            target_modules=_spec("target_modules", target_modules),
            exclude_modules=_spec("exclude_modules", exclude_modules),
            modules_to_save=saved or None,
            nblocks=nblocks,
            rank=rank,
            dropout=dropout,
            structure=structure,
        )
    elif not isinstance(config, MoReConfig):
        raise TypeError(f"config must be a MoReConfig, got {type(config).__name__}")
    config = _copy(config)
    if config.task_type is None:  # PEFT's task of a transformers task model (AutoPeftModel... reads it)
        config.task_type = _task_type(inner)
    if not config.base_model_name_or_path:
        config.base_model_name_or_path = getattr(inner, "name_or_path", None) or None
    tuner = MoReModel(inner, {adapter_name: config}, adapter_name)
    cast_adapter_dtype(inner, adapter_name, autocast_adapter_dtype)
    tuner.set_adapter(adapter_name)  # trainable again after the cast's new Parameters
    if hasattr(inner, "_hf_peft_config_loaded"):  # transformers: save_pretrained saves the adapter only
        inner._hf_peft_config_loaded = True
    return model


_TASK_TYPES = {  # transformers class-name suffix -> PEFT's TaskType
    "ForSequenceClassification": "SEQ_CLS",
    "ForTokenClassification": "TOKEN_CLS",
    "ForQuestionAnswering": "QUESTION_ANS",
    "ForCausalLM": "CAUSAL_LM",
    "ForConditionalGeneration": "SEQ_2_SEQ_LM",
}


def _task_type(model: nn.Module) -> str | None:
    if not hasattr(model, "config"):
        return None
    return next((t for suffix, t in _TASK_TYPES.items() if type(model).__name__.endswith(suffix)), None)


def _spec(name: str, spec: TargetSpec) -> TargetSpec:
    """``spec`` checked (:func:`check_target_spec`), an iterable of names as a list."""
    check_target_spec(name, spec)
    return spec if spec is None or isinstance(spec, str) else list(spec)


def _copy(config: MoReConfig) -> MoReConfig:
    """A copy of ``config`` (what the adapter records is never the user's object)."""
    return MoReConfig.from_peft_type(**{k: v for k, v in config.to_dict().items() if k != "peft_type"})


def add_adapter(model: nn.Module, adapter_name: str, config: MoReConfig) -> nn.Module:
    """Add a MoRe adapter named ``adapter_name`` (``config`` is not modified); it stays inactive
    (and frozen) until :func:`set_adapter`. Everything is checked before the model changes. Inside
    ``with disable_adapter(model)`` the new adapter's layers are disabled too."""
    check_adapter_name(adapter_name)
    if not isinstance(config, MoReConfig):
        raise TypeError(f"config must be a MoReConfig, got {type(config).__name__}")
    inner = unwrap_model(model)
    config = _copy(config)
    if isinstance(inner, PeftModel):
        inner.add_adapter(adapter_name, config)
        return model
    tuner = tuner_of(inner)
    if adapter_name in tuner.peft_config:
        raise ValueError(f"model already has an adapter named {adapter_name!r}; delete_adapter() it first")
    disabled = any(m.disable_adapters for m in tuner.model.modules() if isinstance(m, BaseTunerLayer))
    tuner.peft_config[adapter_name] = config
    try:
        tuner.inject_adapter(tuner.model, adapter_name)
    except BaseException:
        del tuner.peft_config[adapter_name]
        raise
    cast_adapter_dtype(tuner.model, adapter_name)
    tuner.set_adapter(tuner.active_adapter)
    if disabled:
        tuner._enable_adapter_layers(False)
    return model


def set_adapter(model: nn.Module, adapter_name: str | list[str]) -> nn.Module:
    """Compute with ``adapter_name`` (a list: several at once, their updates summed, PEFT's
    meaning); only those adapters are trainable afterwards."""
    names = [adapter_name] if isinstance(adapter_name, str) else adapter_name
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise TypeError(f"adapter_name must be an adapter name or a list of them, got {adapter_name!r}")
    tuner = tuner_of(model)
    unknown = [n for n in names if n not in tuner.peft_config]
    if unknown:
        raise ValueError(f"model has no adapter named {unknown[0]!r}; its adapters: {list(tuner.peft_config)}")
    merged = {a for m in tuner.model.modules() if isinstance(m, MoReLinear) for a in m.merged_adapters}
    if merged and merged != set(names):
        raise ValueError(f"adapters {sorted(merged)} are merged into the weights; unmerge() before switching")
    inner = unwrap_model(model)
    if isinstance(inner, PeftModel) and len(names) == 1:
        inner.set_adapter(names[0])
    else:
        tuner.set_adapter(adapter_name)
    return model


def delete_adapter(model: nn.Module, adapter_name: str) -> nn.Module:
    """Remove ``adapter_name``'s weights, its copies of the modules to save and its config.

    Deleting the last adapter of a model adapted in place gives the base model back, the
    original modules to save included (:func:`unload` keeps the trained copies instead)."""
    tuner = tuner_of(model)
    if adapter_name not in tuner.peft_config:
        raise ValueError(f"model has no adapter named {adapter_name!r}; its adapters: {list(tuner.peft_config)}")
    if any(adapter_name in m.merged_adapters for m in tuner.model.modules() if isinstance(m, MoReLinear)):
        raise ValueError(f"adapter {adapter_name!r} is merged into the weights; unmerge() it first")
    inner = unwrap_model(model)
    if len(tuner.peft_config) == 1 and not isinstance(inner, PeftModel):
        _remove_layers(tuner, merge=False, trained_copies=False)
        return model
    if isinstance(inner, PeftModel):
        inner.delete_adapter(adapter_name)
    else:
        tuner.delete_adapter(adapter_name)
    return model


def merge(model: nn.Module, safe_merge: bool = False) -> nn.Module:
    """Fold the active adapter's ``ΔW`` into every adapted layer (reversible with :func:`unmerge`).

    With ``safe_merge`` every layer is checked first; nothing merges when one would get NaN or
    inf. Refused inside ``with disable_adapter(model)`` (the block computes the base model)."""
    if not isinstance(safe_merge, bool):
        raise TypeError(f"safe_merge must be True or False, got {safe_merge!r}")
    tuner = tuner_of(model)
    _require_enabled(tuner.model, "merge")
    tuner.merge_adapter(safe_merge=safe_merge)
    return model


def unmerge(model: nn.Module) -> nn.Module:
    """Put back the base weights from before :func:`merge`, exactly."""
    tuner = tuner_of(model)
    for m in tuner.model.modules():
        if isinstance(m, MoReLinear) and m.merged:
            m.unmerge()
    return model


def unload(model: nn.Module) -> nn.Module:
    """Remove the adapter layers without merging: the base model again (assign the result). The
    modules to save keep the active adapter's trained copy (PEFT's ``unload``)."""
    return _remove_layers(tuner_of(model), merge=False, trained_copies=True)


def merge_and_unload(model: nn.Module, safe_merge: bool = False) -> nn.Module:
    """Merge the active adapter into the weights and return the plain model (no adapter layers),
    whose modules to save are the active adapter's trained copies. A merged output head that was
    tied to the input embeddings is untied and the config says so; a parametrized weight becomes
    a plain one. Refused inside ``with disable_adapter(model)``."""
    tuner = tuner_of(model)
    _require_enabled(tuner.model, "merge_and_unload")
    return _remove_layers(tuner, merge=True, trained_copies=True, safe_merge=safe_merge)


def _remove_layers(tuner: MoReModel, merge: bool, trained_copies: bool, safe_merge: bool = False) -> nn.Module:
    base = tuner.model
    if not trained_copies:  # the original modules to save come back
        for name, module in list(base.named_modules()):
            if isinstance(module, AuxiliaryTrainingWrapper):
                parent, _, child = name.rpartition(".")
                setattr(base.get_submodule(parent) if parent else base, child, module.original_module)
    result = tuner.merge_and_unload(safe_merge=safe_merge) if merge else tuner.unload()
    for attr in (DISABLED_ATTR, "peft_config"):
        result.__dict__.pop(attr, None)
    if hasattr(result, "_hf_peft_config_loaded"):
        result._hf_peft_config_loaded = False
    return result


def _require_enabled(model: nn.Module, what: str) -> None:
    if getattr(model, DISABLED_ATTR, False):
        raise ValueError(
            f"{what} inside `with disable_adapter(model)`: the model computes the base model there; {what} after "
            f"the block"
        )


@contextlib.contextmanager
def disable_adapter(model: nn.Module) -> Iterator[nn.Module]:
    """``with disable_adapter(model): ...`` computes the base model: no update, and the original of
    every module to save. Adapters added inside are disabled too; :func:`merge` is refused inside."""
    tuner = tuner_of(model)
    base = tuner.model
    if any(m.merged for m in base.modules() if isinstance(m, MoReLinear)):
        raise ValueError("disable_adapter on a merged model: unmerge() it first")
    was = bool(getattr(base, DISABLED_ATTR, False))
    tuner._enable_adapter_layers(False)
    base.__dict__[DISABLED_ATTR] = True
    try:
        yield model
    finally:
        if not was:
            base.__dict__.pop(DISABLED_ATTR, None)
            if any(isinstance(m, BaseTunerLayer) for m in base.modules()):
                tuner._enable_adapter_layers(True)


def get_adapter_parameters(model: nn.Module, adapter_name: str | None = None) -> dict[str, nn.Parameter]:
    """An adapter's own parameters (its updates; default: the active adapter's), by name. The
    copies of the modules to save are not included."""
    tuner = tuner_of(model)
    name = adapter_name if adapter_name is not None else tuner.active_adapters[0]
    return {n: p for n, p in tuner.model.named_parameters() if f".more_update.{name}." in f".{n}"}


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
