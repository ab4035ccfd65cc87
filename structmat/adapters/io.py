"""Saving a model's MoRe adapters and loading them into a model: checked before touching.

The folder format (PEFT's layout, one unit per save, verified reads) is :mod:`.folder`'s. Here:

- :func:`save_adapter` serialises the model's adapters (gathering FSDP2 shards on every process)
  and writes them as one save.
- :func:`load_adapter` / :func:`load_adapters` check the architecture, every layer's name and
  shape, the adapter already in the model under that name, and every tensor (NaN or inf refused,
  :func:`~structmat.adapters.allow_nonfinite_weights`) before they change anything; a failed load
  leaves the model as it was. A load applies the adapter to exactly the layers it was saved from.
- :func:`from_pretrained` rebuilds the base model and loads every adapter of a folder.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from peft import PeftModel
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from torch import nn

from .api import adapter_configs, add_adapter, apply_more, set_adapter, tuner_of, unwrap_model
from .compat import PEFT_PREFIX
from .config import MoReConfig
from .folder import (
    CONFIG_NAME,
    DEFAULT_ADAPTER,
    MANIFEST_NAME,
    WEIGHTS_NAME,
    SavedAdapter,
    check_path,
    config_from_file,
    read_adapter,
    read_adapters,
    saved_adapter_names,
    write_save,
)
from .layer import MoReLinear, base_shape, check_adapter_name, nonfinite_allowed
from .sharding import full_tensor, is_sharded
from .sharding import is_main_process as main_process
from .storage import locked_folder
from .updates import new_update


def adapter_state_dict(model: nn.Module, adapter_name: str | None = None) -> dict[str, torch.Tensor]:
    """An adapter's tensors as saved (PEFT's keys, ``base_model.model.`` first): its updates, a
    projection init's ``M``, and its copies of the modules to save; detached, whole, contiguous,
    on CPU. Default: the active adapter. On a model sharded with FSDP2 the shards are gathered,
    so every process must call this."""
    inner = unwrap_model(model)
    tuner = tuner_of(inner)
    name = adapter_name if adapter_name is not None else tuner.active_adapters[0]
    source = inner if isinstance(inner, PeftModel) else tuner.model
    state = get_peft_model_state_dict(source, adapter_name=name, save_embedding_layers=False)
    prefix = "" if isinstance(inner, PeftModel) else PEFT_PREFIX
    return {prefix + k: full_tensor(v.detach()).contiguous().cpu() for k, v in state.items()}


def save_adapter(
    model: nn.Module,
    path: str | os.PathLike,
    adapter_name: str | None = None,
    *,
    is_main_process: bool | None = None,
    timeout: float = 300.0,
) -> Path:
    """Save the model's adapters (or only ``adapter_name``, the folder's other adapters kept)
    under folder ``path`` as one unit (see the module doc); returns ``path``.

    Several processes (``torchrun``): ``is_main_process`` (default: rank 0) writes. On a model
    sharded with FSDP2 every process must call ``save_adapter`` (gathering the shards is
    collective); a process that waits more than ``timeout`` seconds for the others raises
    instead of hanging (the usual cause: ``save_adapter`` called on rank 0 only).
    """
    check_path(path)
    if adapter_name is not None:
        check_adapter_name(adapter_name)
    configs = adapter_configs(model)
    if not configs:
        raise ValueError("model has no MoRe adapter (call apply_more, get_peft_model or load_adapter first)")
    names = list(configs) if adapter_name is None else [adapter_name]
    for name in names:
        if name not in configs:
            raise ValueError(f"model has no adapter named {name!r}; its adapters: {list(configs)}")
    if any(is_sharded(p) for p in unwrap_model(model).parameters()):
        _wait_for_every_process("save_adapter", timeout)
    files = {}
    for name in names:  # everything serialised before the folder is touched
        config = dataclasses.replace(configs[name])
        config.inference_mode = False
        files[name] = config.to_json(), adapter_state_dict(model, name)
    if not (main_process() if is_main_process is None else is_main_process):
        return Path(path)
    with locked_folder(path) as root:
        write_save(root, files, replace_one=adapter_name is not None)
    return Path(path)


def _wait_for_every_process(what: str, timeout: float) -> None:
    """A barrier that raises after ``timeout`` seconds instead of hanging."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    work = dist.barrier(async_op=True)
    try:
        done = work.wait(timeout=timedelta(seconds=timeout))
    except RuntimeError as err:
        raise RuntimeError(
            f"{what} on a model sharded with FSDP2 must be called on every process (it gathers the shards); rank "
            f"{dist.get_rank()} waited {timeout:g} s for the others ({err})"
        ) from None
    if done is False:
        raise RuntimeError(
            f"{what} on a model sharded with FSDP2 must be called on every process (it gathers the shards); rank "
            f"{dist.get_rank()} waited {timeout:g} s for the others"
        )


def read_adapter_config(path: str | os.PathLike) -> MoReConfig:
    """The :class:`MoReConfig` of the adapter saved in folder ``path`` (what :func:`load_adapter`
    uses; unknown keys dropped with a warning), or of its ``adapter_config.json`` alone when the
    folder has no weights file. Refuses another PEFT method's adapter."""
    folder = check_path(path)
    if not (folder / WEIGHTS_NAME).is_file() and (folder / CONFIG_NAME).is_file():
        return config_from_file(folder / CONFIG_NAME)
    return read_adapter(path).config


# -- loading ---------------------------------------------------------------------------------------


def _expected_shapes(base: nn.Module, saved: SavedAdapter) -> tuple[dict[str, tuple[int, ...]], set[str], list[str]]:
    """The shape each saved tensor must have in ``base``, which of them are the updates'
    parameters (floating point), and the problems found on the way."""
    config, problems, expected, factors = saved.config, [], {}, set()
    for layer in saved.layers:
        try:
            module = base.get_submodule(layer)
        except AttributeError:
            problems.append(f"the model has no layer {layer!r} (the adapter was saved for {config.base_model_class})")
            continue
        module = module.get_base_layer() if isinstance(module, MoReLinear) else module
        try:
            in_f, out_f = base_shape(module)
            update = new_update(
                config.structure,
                in_f,
                out_f,
                config.settings_for(layer),
                zero=True,
                device=torch.device("meta"),
                dtype=torch.float32,
            )
        except (TypeError, ValueError) as err:
            problems.append(f"layer {layer!r}: {err}")
            continue
        params = {n for n, _ in update.named_parameters()}
        for pname, t in update.state_dict().items():  # parameters and persistent buffers (a family may have some)
            for part in ("more_update", "more_init") if config.init_weights == "projection" else ("more_update",):
                key = f"{PEFT_PREFIX}{layer}.{part}.{pname}"
                expected[key] = tuple(t.shape)
                if pname in params:
                    factors.add(key)
    for module_name in config.modules_to_save or ():
        hits = [n for n, _ in base.named_modules() if n == module_name or n.endswith("." + module_name)]
        for hit in hits:
            module = base.get_submodule(hit)
            original = getattr(module, "original_module", module)
            for key, t in original.state_dict().items():
                expected[f"{PEFT_PREFIX}{hit}.{key}"] = tuple(t.shape)
    return expected, factors, problems


def _loading_problems(model: nn.Module, saved: SavedAdapter, adapter_name: str) -> list[str]:
    """Everything that would make loading ``saved`` into ``model`` fail or be wrong (empty: fine)."""
    config = saved.config
    inner = unwrap_model(model)
    configs = adapter_configs(inner)
    base = tuner_of(inner).model if configs else inner
    if any(m.merged for m in base.modules() if isinstance(m, MoReLinear)):
        return ["the model has a merged adapter; unmerge() it first"]
    if not saved.layers:
        return ["it holds no adapted layer"]
    expected, factors, problems = _expected_shapes(base, saved)
    missing = sorted(set(expected) - set(saved.state))
    extra = sorted(set(saved.state) - set(expected))
    wrong = [k for k in expected if k in saved.state and tuple(saved.state[k].shape) != expected[k]]
    if missing or extra or wrong:
        problems.append(
            f"tensors missing {missing[:5]}, unexpected {extra[:5]}, wrong shape "
            f"{[(k, tuple(saved.state[k].shape), expected[k]) for k in wrong[:5]]}"
        )
    problems += [
        f"{k} is {t.dtype}, not a floating-point tensor"
        for k, t in saved.state.items()
        if k in factors and not t.is_floating_point()
    ]  # the updates' parameters; buffers may be integers (BatchNorm's num_batches_tracked, a family's indices)
    if not nonfinite_allowed():
        bad = [k for k, t in saved.state.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
        if bad:
            problems.append(
                f"tensors {bad[:3]} hold NaN or inf (a corrupt or forged file; "
                f"structmat.adapters.allow_nonfinite_weights() loads it anyway)"
            )
    if adapter_name in configs:  # replace the values of an adapter on the same layers
        have = sorted(n for n, m in base.named_modules() if isinstance(m, MoReLinear) and adapter_name in m.more_update)
        if have != sorted(saved.layers):
            problems.append(
                f"the model's adapter {adapter_name!r} is on other layers ({len(have)} layers, the saved one on "
                f"{len(saved.layers)}); load it under another adapter_name, or delete_adapter() first"
            )
        for layer in have if have == sorted(saved.layers) else []:
            module = base.get_submodule(layer)
            for pname, p in module.more_update[adapter_name].named_parameters():
                key = f"{PEFT_PREFIX}{layer}.more_update.{pname}"
                if key in saved.state and tuple(saved.state[key].shape) != tuple(p.shape):
                    problems.append(
                        f"layer {layer!r}: the saved {pname} is {tuple(saved.state[key].shape)} but the model's "
                        f"adapter {adapter_name!r} has {tuple(p.shape)}; load it under another adapter_name, or "
                        f"delete_adapter() first"
                    )
        if config.init_weights == "projection" or configs[adapter_name].init_weights == "projection":
            problems.append(
                f"the model's adapter {adapter_name!r} or the saved one is projection-initialised (the base weights "
                f"hold W - M): load it into the base model"
            )
        if sorted(configs[adapter_name].modules_to_save or []) != sorted(config.modules_to_save or []):
            problems.append(
                f"the model's adapter {adapter_name!r} saves the modules {configs[adapter_name].modules_to_save}, the "
                f"saved one {config.modules_to_save}"
            )
    return problems


def load_adapter(model: nn.Module, path: str | os.PathLike, adapter_name: str = DEFAULT_ADAPTER) -> nn.Module:
    """Load the adapter saved in folder ``path`` into ``model`` as ``adapter_name``; it becomes active.

    ``model``: a base model (the adapter is applied to exactly the layers it was saved from, in
    place), a model with adapters (a new name adds one; the name of an adapter on the same layers
    replaces its values and dropout), or a ``PeftModel``. Everything is checked before the model
    changes; a problem raises ``ValueError`` naming it and leaves the model as it was.
    """
    check_adapter_name(adapter_name)
    saved = read_adapter(path)
    problems = _loading_problems(model, saved, adapter_name)
    if problems:
        raise ValueError(f"cannot load the adapter in {str(path)!r}: " + "; ".join(problems))
    _load_checked(model, saved, adapter_name)
    set_adapter(model, adapter_name)
    return model


def _load_checked(model: nn.Module, saved: SavedAdapter, adapter_name: str) -> None:
    """Put ``saved`` (checked by :func:`_loading_problems`) into ``model`` as ``adapter_name``."""
    inner = unwrap_model(model)
    names = [n for n, _ in (tuner_of(inner).model if adapter_configs(inner) else inner).named_modules()]
    present = [m for m in saved.config.modules_to_save or () if any(n == m or n.endswith("." + m) for n in names)]
    # exactly the saved layers: a regex of their full names (a list would also match every layer whose name
    # ends with one of them: '0' would adapt '1.0' too); PEFT's task models list heads a model may lack
    exact = "|".join(re.escape(layer) for layer in saved.layers)
    config = dataclasses.replace(saved.config, target_modules=exact, modules_to_save=present or None)
    configs = adapter_configs(inner)
    if adapter_name not in configs:
        if configs or isinstance(inner, PeftModel):
            add_adapter(inner, adapter_name, config)
        else:
            apply_more(inner, config=config, adapter_name=adapter_name)
    tuner = tuner_of(inner)
    tuner.peft_config[adapter_name].dropout = config.dropout
    tuner.peft_config[adapter_name].dropout_position = config.dropout_position
    target = inner if isinstance(inner, PeftModel) else tuner.model
    state = (
        saved.state
        if isinstance(inner, PeftModel)
        else {k.removeprefix(PEFT_PREFIX): v for k, v in saved.state.items()}
    )
    result = set_peft_model_state_dict(target, state, adapter_name=adapter_name)
    leftover = [k for k in result.unexpected_keys if not k.startswith("_")]
    if leftover:  # checked before: a PEFT that maps keys differently
        raise RuntimeError(f"PEFT did not load {leftover[:3]} of {saved.path}; the model may be partly loaded")
    for module in tuner.model.modules():  # the saved dropout, also where the model's adapter had another
        if isinstance(module, MoReLinear) and adapter_name in module.more_dropout:
            drop = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
            module.more_dropout[adapter_name] = drop.train(module.training)
            module.more_dropout_position[adapter_name] = config.dropout_position


def load_adapters(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load every adapter saved under ``path`` (one complete set), each under its name.

    The adapter active before stays active when it is among them; otherwise ``"default"`` (or
    the first). All are read and checked before the model changes."""
    saved = read_adapters(path)
    for name, one in saved.items():  # check every one first: a problem with the second must not leave the first loaded
        problems = _loading_problems(model, one, name)
        if problems:
            raise ValueError(f"cannot load the adapter in {str(one.path)!r}: " + "; ".join(problems))
    before = active = None
    with contextlib.suppress(ValueError):
        before = tuner_of(model).active_adapters[0]
    for name, one in saved.items():
        _load_checked(model, one, name)
    names = list(saved)
    active = before if before in names else (DEFAULT_ADAPTER if DEFAULT_ADAPTER in names else names[0])
    set_adapter(model, active)
    return model


def from_pretrained(path: str | os.PathLike, **model_kwargs) -> nn.Module:
    """Base model + saved adapters in one call, as PEFT's ``AutoPeftModel...from_pretrained``.

    The base model is the transformers class recorded at save time (``base_model_class``, with the
    number of labels of a classifier), loaded from ``base_model_name_or_path`` (a local folder is
    recorded as an absolute path; a missing one is an error at once, not a hub download);
    then every adapter saved under ``path`` is loaded. Returns the model in eval mode."""
    saved = read_adapters(path)
    config = next(iter(saved.values())).config
    where = config.base_model_name_or_path
    if not where:
        raise ValueError(
            f"the adapter in {str(path)!r} does not record where its base model loads from (base_model_name_or_path); "
            f"load the base model yourself and call load_adapter(model, path)"
        )
    local = os.path.isabs(where) or where.startswith((".", "~")) or where.count("/") > 1  # a hub id is "org/name"
    if local and not os.path.isdir(os.path.expanduser(where)):
        raise FileNotFoundError(
            f"the base model of the adapter in {str(path)!r} was recorded at {where!r}, which does not exist here; "
            f"load the base model yourself and call load_adapter(model, path)"
        )
    import transformers

    cls = getattr(transformers, config.base_model_class or "", None)
    if cls is None or not hasattr(cls, "from_pretrained"):
        raise ValueError(
            f"the adapter in {str(path)!r} was saved for {config.base_model_class!r}, which this transformers version "
            f"does not have; load the base model yourself and call load_adapter(model, path)"
        )
    kwargs = ({"num_labels": config.num_labels} if config.num_labels else {}) | model_kwargs
    model = cls.from_pretrained(os.path.expanduser(where), **kwargs)
    load_adapters(model, path)
    return model.eval()


__all__ = [
    "CONFIG_NAME",
    "MANIFEST_NAME",
    "WEIGHTS_NAME",
    "SavedAdapter",
    "adapter_state_dict",
    "from_pretrained",
    "load_adapter",
    "load_adapters",
    "read_adapter",
    "read_adapter_config",
    "read_adapters",
    "save_adapter",
    "saved_adapter_names",
]
