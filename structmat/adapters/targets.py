"""Which layers of a model an adapter wraps: PEFT's ``target_modules`` semantics.

- a list/tuple/set of strings: a module matches if its dotted name equals an entry or ends
  with ``"." + entry``;
- a string: a regex that must ``fullmatch`` the dotted name;
- ``"all-linear"``: every ``nn.Linear`` / transformers ``Conv1D`` but the output head
  (``get_output_embeddings()``) and the modules kept trainable (``modules_to_save``);
- ``None``: a default per architecture family (``model.config.model_type``): PEFT's LoRA table.

Every name is checked against the model before anything changes (:func:`resolve_targets`), so a
typo is an error that lists the model's linear layers instead of an adapter on nothing.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Iterable, Iterator

import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
from peft.utils.other import AuxiliaryTrainingWrapper
from torch import nn

# The heads a task model needs trained (PEFT's modules_to_save for SEQ_CLS / TOKEN_CLS: classifier,
# score; QUESTION_ANS: qa_outputs): randomly initialised on a pretrained encoder.
CLASSIFIER_HEADS = ("classifier", "score", "qa_outputs")

TargetSpec = str | Iterable[str] | None


class TargetError(ValueError):
    """A target specification that does not fit the model (the message says why)."""


def is_linear(module: nn.Module) -> bool:
    """``nn.Linear`` or transformers' GPT-2-style ``Conv1D`` (weight stored ``(in, out)``)."""
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"


def candidate_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``named_modules()`` without the insides of adapter wrappers (a wrapped layer's
    ``base_layer``, a saved module's copies): those are never targets themselves."""
    wrappers = (BaseTunerLayer, AuxiliaryTrainingWrapper)
    out, inside = [], []
    for name, mod in model.named_modules():
        if not name or any(name.startswith(w + ".") for w in inside):
            continue
        out.append((name, mod))
        if isinstance(mod, wrappers):
            inside.append(name)
    return out


def linear_layer_names(model: nn.Module) -> list[str]:
    """Dotted names of the linear layers an adapter can wrap (a layer already wrapped by an
    adapter counts as the linear layer it wraps)."""
    return [
        name
        for name, mod in candidate_modules(model)
        if is_linear(mod) or (isinstance(mod, BaseTunerLayer) and is_linear(mod.get_base_layer()))
    ]


def not_adaptable(model: nn.Module, name: str) -> str | None:
    """Why the linear layer ``name`` cannot be wrapped (its owner reads its weight instead of
    calling it, so a wrapper would be skipped or break the owner), or ``None``."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    if isinstance(parent, nn.MultiheadAttention):
        return "nn.MultiheadAttention never calls its out_proj (it reads out_proj.weight)"
    if isinstance(parent, nn.TransformerEncoderLayer) and child in ("linear1", "linear2"):
        return "nn.TransformerEncoderLayer's fast path (eval, no grad) reads linear1/2.weight, skipping a wrapper"
    return None


def summarize_names(names: Iterable[str]) -> str:
    """Names with layer numbers folded (``encoder.layer.*.attention.self.query``), deduplicated."""
    folded = dict.fromkeys(re.sub(r"\.\d+(?=\.|$)", ".*", n) for n in names)
    return ", ".join(folded) if folded else "(none)"


def matches(name: str, spec: str | Iterable[str]) -> bool:
    if isinstance(spec, str):
        return re.fullmatch(spec, name) is not None
    return any(name == t or name.endswith("." + t) for t in spec)


def default_targets(model: nn.Module) -> list[str]:
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING:
        raise TargetError(
            f"target_modules=None but there is no default for model_type={model_type!r}; pass "
            f"target_modules (a list of names, a regex or 'all-linear'). Linear layers of this "
            f"model: {summarize_names(linear_layer_names(model))}"
        )
    return list(TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING[model_type])


def resolve_modules_to_save(model: nn.Module, modules_to_save: str | Iterable[str] | None) -> list[str]:
    """``"auto"``: the task head(s) of a classification or question-answering model
    (:data:`CLASSIFIER_HEADS`), if any."""
    if modules_to_save is None:
        return []
    if modules_to_save == "auto":
        return [n for n, _ in model.named_children() if n in CLASSIFIER_HEADS]
    if isinstance(modules_to_save, str):
        modules_to_save = [modules_to_save]
    names = [n for n, _ in candidate_modules(model)]
    out = []
    for spec in modules_to_save:
        hits = [n for n in names if n == spec or n.endswith("." + spec)]
        if not hits:
            raise TargetError(f"modules_to_save entry {spec!r} matches no module of the model")
        out.extend(hits)
    return list(dict.fromkeys(out))


def resolve_targets(
    model: nn.Module,
    target_modules: TargetSpec,
    exclude_modules: TargetSpec = None,
    modules_to_save: Iterable[str] = (),
    keep: Callable[[str], bool] | None = None,
) -> list[str]:
    """The dotted names of the linear layers to wrap; a clear error (:class:`TargetError`) when
    there are none, or when a listed name matches no linear layer. ``keep``: a further filter
    (PEFT's ``layers_to_transform``)."""
    linear = linear_layer_names(model)
    if not linear:
        raise TargetError(f"model ({type(model).__name__}) has no nn.Linear or Conv1D layers to adapt")
    saved = tuple(modules_to_save)

    def in_saved(name: str) -> bool:
        return any(name == s or name.startswith(s + ".") for s in saved)

    if target_modules is None:
        target_modules = default_targets(model)
    if target_modules == "all-linear":
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        chosen = [n for n in linear if model.get_submodule(n) is not head and not in_saved(n)]
    else:
        if not isinstance(target_modules, str):
            target_modules = list(target_modules)
            if not target_modules or not all(isinstance(t, str) for t in target_modules):
                raise TargetError(f"target_modules must be strings, got {target_modules!r}")
        chosen = [n for n in linear if matches(n, target_modules) and not in_saved(n)]
        if isinstance(target_modules, list):
            unknown = [t for t in target_modules if not any(matches(n, [t]) for n in linear)]
            if unknown:
                raise TargetError(
                    f"target_modules entries {unknown} match no linear layer of the model; its "
                    f"linear layers are: {summarize_names(linear)}"
                )
    if exclude_modules is not None:
        chosen = [n for n in chosen if not matches(n, exclude_modules)]
    if keep is not None:
        chosen = [n for n in chosen if keep(n)]
    blocked = {n: why for n in chosen if (why := not_adaptable(model, n)) is not None}
    if blocked and target_modules != "all-linear":
        raise TargetError(
            "target_modules matches layers that cannot be adapted: "
            + "; ".join(f"{n!r}: {why}" for n, why in blocked.items())
            + " (leave them out with exclude_modules)"
        )
    if blocked:
        warnings.warn(
            f"'all-linear' leaves out {summarize_names(blocked)}: {next(iter(blocked.values()))}",
            stacklevel=4,
        )
        chosen = [n for n in chosen if n not in blocked]
    if not chosen:
        raise TargetError(
            f"target_modules={target_modules!r} matched no linear layer; the model's linear "
            f"layers are: {summarize_names(linear)}"
        )
    return chosen


def storage_key(t: torch.Tensor) -> tuple[str, int]:
    """What tied tensors have in common: the storage of a plain tensor; for a tensor without one
    (meta, a quantized or sharded tensor subclass, an empty tensor) the tensor object itself."""
    if type(t) in (torch.Tensor, nn.Parameter) and t.device.type != "meta":
        try:
            ptr = t.untyped_storage().data_ptr()
        except (RuntimeError, NotImplementedError):
            ptr = 0
        if ptr:
            return ("storage", ptr)
    return ("object", id(t))


def shared_weight_owners(model: nn.Module, targets: list[str]) -> dict[str, list[str]]:
    """For each target whose weight is shared with a parameter of another module (tied
    embeddings): those modules' names."""
    owners: dict[tuple[str, int], list[str]] = {}
    for name, module in candidate_modules(model):
        base = module.get_base_layer() if isinstance(module, BaseTunerLayer) else module
        for p in base.parameters(recurse=base is not module):
            owners.setdefault(storage_key(p), []).append(name)
    shared = {}
    for name in targets:
        module = model.get_submodule(name)
        weight = (module.get_base_layer() if isinstance(module, BaseTunerLayer) else module).weight
        others = [o for o in owners.get(storage_key(weight), []) if o != name]
        if others:
            shared[name] = list(dict.fromkeys(others))
    return shared


def check_target_spec(name: str, spec: object) -> None:
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
