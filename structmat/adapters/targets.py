"""Which layers of a model an adapter wraps: PEFT's ``target_modules`` semantics.

- a list/tuple/set of strings: a module matches if its dotted name equals an entry or ends
  with ``"." + entry``;
- a string: a regex that must ``fullmatch`` the dotted name;
- ``"all-linear"``: every ``nn.Linear`` / transformers ``Conv1D`` but the output head
  (``get_output_embeddings()``) and the modules kept trainable (``modules_to_save``);
- ``None``: a default per architecture family (``model.config.model_type``), as PEFT's LoRA.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable

from torch import nn

# model_type -> default targets (attention q and v, as PEFT's LoRA table)
DEFAULT_TARGETS: dict[str, list[str]] = {
    "bert": ["query", "value"],
    "roberta": ["query", "value"],
    "xlm-roberta": ["query", "value"],
    "distilbert": ["q_lin", "v_lin"],
    "deberta-v2": ["query_proj", "value_proj"],
    "gpt2": ["c_attn"],
    "llama": ["q_proj", "v_proj"],
    "mistral": ["q_proj", "v_proj"],
    "mixtral": ["q_proj", "v_proj"],
    "qwen2": ["q_proj", "v_proj"],
    "qwen3": ["q_proj", "v_proj"],
    "gemma": ["q_proj", "v_proj"],
    "gemma2": ["q_proj", "v_proj"],
    "phi3": ["qkv_proj"],
    "opt": ["q_proj", "v_proj"],
    "t5": ["q", "v"],
}

# The heads a task model needs trained (PEFT's modules_to_save for SEQ_CLS / TOKEN_CLS: classifier,
# score; QUESTION_ANS: qa_outputs): randomly initialised on a pretrained encoder.
CLASSIFIER_HEADS = ("classifier", "score", "qa_outputs")

TargetSpec = str | Iterable[str] | None


def is_linear(module: nn.Module) -> bool:
    """``nn.Linear`` or transformers' GPT-2-style ``Conv1D`` (weight stored ``(in, out)``)."""
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"


def _adapter_wrapper_types() -> tuple[type, ...]:
    from .layer import MoReLinear
    from .saved_modules import ModulesToSaveWrapper

    return MoReLinear, ModulesToSaveWrapper


def candidate_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``named_modules()`` without the insides of adapter wrappers (a wrapped layer's
    ``base_layer``, a saved module's copies): those are never targets themselves."""
    wrappers = _adapter_wrapper_types()
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
    more_linear = _adapter_wrapper_types()[0]
    return [name for name, mod in candidate_modules(model) if is_linear(mod) or isinstance(mod, more_linear)]


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


def _matches(name: str, spec: str | Iterable[str]) -> bool:
    if isinstance(spec, str):
        return re.fullmatch(spec, name) is not None
    return any(name == t or name.endswith("." + t) for t in spec)


def default_targets(model: nn.Module) -> list[str]:
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in DEFAULT_TARGETS:
        raise ValueError(
            f"target_modules=None but there is no default for model_type={model_type!r}; pass "
            f"target_modules (a list of names, a regex or 'all-linear'). Linear layers of this "
            f"model: {summarize_names(linear_layer_names(model))}"
        )
    return DEFAULT_TARGETS[model_type]


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
            raise ValueError(f"modules_to_save entry {spec!r} matches no module of the model")
        out.extend(hits)
    return list(dict.fromkeys(out))


def resolve_targets(
    model: nn.Module,
    target_modules: TargetSpec,
    exclude_modules: TargetSpec = None,
    modules_to_save: Iterable[str] = (),
) -> list[str]:
    """The dotted names of the linear layers to wrap; a clear error when there are none."""
    linear = linear_layer_names(model)
    if not linear:
        raise ValueError(f"model ({type(model).__name__}) has no nn.Linear or Conv1D layers to adapt")
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
                raise ValueError(f"target_modules must be strings, got {target_modules!r}")
        chosen = [n for n in linear if _matches(n, target_modules) and not in_saved(n)]
        if isinstance(target_modules, list):
            unknown = [t for t in target_modules if not any(_matches(n, [t]) for n in linear)]
            if unknown:
                raise ValueError(
                    f"target_modules entries {unknown} match no linear layer of the model; its "
                    f"linear layers are: {summarize_names(linear)}"
                )
    if exclude_modules is not None:
        chosen = [n for n in chosen if not _matches(n, exclude_modules)]
    blocked = {n: why for n in chosen if (why := not_adaptable(model, n)) is not None}
    if blocked and target_modules != "all-linear":
        raise ValueError(
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
        raise ValueError(
            f"target_modules={target_modules!r} matched no linear layer; the model's linear "
            f"layers are: {summarize_names(linear)}"
        )
    return chosen
