"""``MoReModel``: MoRe as a PEFT tuner (``BaseTuner``), what ``peft.get_peft_model`` builds for a
:class:`~structmat.adapters.MoReConfig`.

PEFT's base class does the adapter bookkeeping (named adapters, ``set_adapter``, ``delete_adapter``,
``disable_adapter``, modules to save, ``merge_and_unload``, saving and loading). This class adds
what MoRe needs and what a demanding user expects:

- **Everything checked before the model changes**: the adapter name, the target specification
  (a list entry that matches no linear layer is an error that lists the model's linear layers),
  layers that cannot be wrapped (``nn.MultiheadAttention.out_proj``, which its owner never
  calls), a merged model, a projection-initialised adapter beside another one, tied weights
  where they cannot work, and every layer's shape (a size that does not fit raises naming the
  layer). A failed injection leaves the model as it was.
- **The mode of the module wrapped**: a model in eval mode gets adapter layers in eval mode.
- **All-or-nothing merges**: with ``safe_merge`` every layer is checked before any is merged;
  ``merge_and_unload`` folds parametrized weights and unties a config whose embeddings it untied.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer, _ExcludedModule, check_target_module_exists
from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
from peft.utils.other import AuxiliaryTrainingWrapper, _set_adapter
from peft.utils.quantization_utils import get_quantization_kwargs
from torch import nn

from .config import MoReConfig
from .layer import MoReLayer, MoReLinear, base_shape, check_adapter_name, is_linear
from .targets import (
    CLASSIFIER_HEADS,
    TargetError,
    matches,
    resolve_modules_to_save,
    resolve_targets,
    shared_weight_owners,
    storage_key,
)
from .updates import new_update

CLASSIFIER_SUFFIXES = ("ForSequenceClassification", "ForTokenClassification")  # whose head size is num_labels


class MoReModel(BaseTuner):
    """MoRe adapters on a model (PEFT's ``BaseTuner``); see the module doc.

    Built by ``peft.get_peft_model(model, MoReConfig(...))`` (inside a ``PeftModel``) or by
    :func:`~structmat.adapters.apply_more` (in place). ``MoReModel.view(model)`` gives the tuner of
    a model that carries MoRe layers but no tuner (injected in place, or loaded by transformers).
    """

    prefix: str = "more_"
    tuner_layer_cls = MoReLayer
    target_module_mapping = TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

    def __init__(self, model: nn.Module, peft_config, adapter_name: str = "default", **kwargs: Any) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        configs = peft_config if isinstance(peft_config, dict) else {adapter_name: peft_config}
        bad = {n: type(c).__name__ for n, c in configs.items() if not isinstance(c, MoReConfig)}
        if bad or not configs or adapter_name not in configs:
            raise TypeError(
                f"peft_config must be a MoReConfig (or a dict of them holding adapter_name={adapter_name!r}), got "
                f"{type(peft_config).__name__}"
            )
        check_adapter_name(adapter_name)
        super().__init__(model, peft_config, adapter_name, **kwargs)

    # -- a tuner for a model that has the layers but no tuner -------------------------------------
    @classmethod
    def view(cls, model: nn.Module) -> MoReModel:
        """The tuner of ``model``'s MoRe layers, without injecting anything (the layers and
        ``model.peft_config`` are the state; this object holds none of its own)."""
        configs = getattr(model, "peft_config", None)
        layers = [m for m in model.modules() if isinstance(m, MoReLayer)]
        if not layers or not isinstance(configs, dict) or not any(isinstance(c, MoReConfig) for c in configs.values()):
            raise ValueError("model has no MoRe adapter (call apply_more, get_peft_model or load_adapter first)")
        tuner = cls.__new__(cls)
        nn.Module.__init__(tuner)
        tuner.model = model
        tuner.peft_config = configs
        tuner.active_adapter = list(layers[0].active_adapters)
        tuner.targeted_module_names = [n for n, m in model.named_modules() if isinstance(m, MoReLayer)]
        tuner.targeted_parameter_names = []
        return tuner

    # -- checks before anything changes -----------------------------------------------------------
    def _check_new_adapter_config(self, config: MoReConfig) -> None:
        super()._check_new_adapter_config(config)
        if not isinstance(config, MoReConfig):
            raise TypeError(f"config must be a MoReConfig, got {type(config).__name__}")
        name = next(n for n, c in self.peft_config.items() if c is config)
        check_adapter_name(name)
        model = self.model
        layers = {n: m for n, m in model.named_modules() if isinstance(m, MoReLayer)}
        if any(layer.merged for layer in layers.values()):
            raise ValueError("the model has a merged adapter; unmerge it before adding another")
        others = [n for n in self.peft_config if n != name]
        projected = [n for n in others if getattr(self.peft_config[n], "init_weights", None) == "projection"]
        if config.init_weights == "projection" and others:
            raise ValueError(
                f"init_weights='projection' makes the base weights the residual W - M, so it must be the model's only "
                f"adapter; the model has {others}"
            )
        if projected:
            raise ValueError(
                f"the model's adapter {projected[0]!r} is projection-initialised (its base weights hold W - M); a new "
                f"adapter would sit on that residual: unload or delete it first"
            )
        targets = self._resolve(config)
        if config.modules_to_save:  # every entry must name a module (PEFT would skip a typo silently) ...
            entries = list(config.modules_to_save)
            if config.task_type is not None:  # ... but PEFT's task models add every head name they know
                entries = [e for e in entries if e not in CLASSIFIER_HEADS or _names_a_module(model, e)]
            try:
                saved = resolve_modules_to_save(model, entries)
            except TargetError as err:
                raise ValueError(str(err)) from None
            _check_modules_to_save(model, saved)
        tied = shared_weight_owners(model, targets)
        if config.init_weights == "projection" and tied:
            raise ValueError(
                "init_weights='projection' replaces the base weights by W - M, which a tied weight cannot take; tied "
                f"target modules: {sorted(tied)}"
            )
        for target, owners in tied.items():
            warnings.warn(
                f"target module {target!r} shares its weight with {', '.join(map(repr, owners))} (tied weights): "
                f"merging gives {target!r} its own merged weight and leaves the others unchanged",
                stacklevel=5,
            )
        # build one update per distinct layer shape now: a size that does not fit fails before any change
        shapes = {}
        for target in targets:
            module = model.get_submodule(target)
            base = module.get_base_layer() if isinstance(module, BaseTunerLayer) else module
            in_f, out_f = base_shape(base)
            settings = config.settings_for(target)
            shapes.setdefault((in_f, out_f, settings["rank"], settings["nblocks"]), (target, settings))
        larger = []
        for (in_f, out_f, _, _), (target, settings) in shapes.items():
            try:
                update = new_update(
                    config.structure, in_f, out_f, settings, zero=True, device=torch.device("meta"), dtype=torch.float32
                )
            except (TypeError, ValueError) as err:
                raise ValueError(f"cannot adapt layer {target!r} (in={in_f}, out={out_f}): {err}") from None
            if update.num_params > in_f * out_f:
                larger.append((target, update.num_params, in_f * out_f))
        if larger:
            target, n, dense = larger[0]
            warnings.warn(
                f"the {config.structure} update (rank={config.rank}) has more parameters than the dense weight of "
                f"{target!r} ({n:,d} > {dense:,d}): a smaller rank (or fine-tuning the layer itself) is cheaper",
                stacklevel=5,
            )
        self._targets = getattr(self, "_targets", {})
        self._targets[name] = set(targets)

    def _resolve(self, config: MoReConfig) -> list[str]:
        """The exact names of the layers ``config`` adapts (named errors otherwise)."""

        def peft_rules(name: str) -> bool:  # layers_to_transform / layers_pattern, as PEFT reads them
            if config.layers_to_transform is None:
                return True
            probe = MoReConfig(
                target_modules=[name], layers_to_transform=config.layers_to_transform,
                layers_pattern=config.layers_pattern,
            )  # fmt: skip
            return bool(check_target_module_exists(probe, name))

        try:
            return resolve_targets(
                self.model, config.target_modules, config.exclude_modules, config.modules_to_save or (),
                keep=peft_rules,
            )  # fmt: skip
        except TargetError as err:
            raise ValueError(str(err)) from None

    def _prepare_adapter_config(self, peft_config: MoReConfig, model_config: dict) -> MoReConfig:
        peft_config.resolve_base_path()
        model = self.model
        if peft_config.base_model_class is None:
            peft_config.base_model_class = type(model).__name__ if hasattr(model, "config") else None
        if peft_config.num_labels is None and type(model).__name__.endswith(CLASSIFIER_SUFFIXES):
            # the config's property: transformers 5's to_dict() (model_config) has id2label, not num_labels
            peft_config.num_labels = getattr(getattr(model, "config", None), "num_labels", None) or None
        return peft_config  # target_modules=None is resolved by _resolve (with a better error than PEFT's)

    def _check_target_module_exists(self, peft_config: MoReConfig, key: str):
        """Whether layer ``key`` is one :meth:`_resolve` chose (PEFT's "excluded" marker for an
        excluded one, so that PEFT's bookkeeping of exclusions stays right)."""
        name = next((n for n, c in self.peft_config.items() if c is peft_config), None)
        if key in getattr(self, "_targets", {}).get(name, ()):
            return True
        excluded = peft_config.exclude_modules is not None and matches(key, peft_config.exclude_modules)
        return _ExcludedModule() if excluded else False

    # -- injection --------------------------------------------------------------------------------
    def _create_and_replace(
        self, config: MoReConfig, adapter_name: str, target: nn.Module, target_name: str, parent: nn.Module,
        current_key: str, **optional_kwargs: Any,
    ) -> None:  # fmt: skip
        kwargs = dict(
            structure=config.structure,
            settings=config.settings_for(current_key),
            dropout=config.dropout,
            dropout_position=config.dropout_position,
            init_weights=config.init_weights,
            inference_mode=config.inference_mode,
        )
        if isinstance(target, MoReLayer):
            target.update_layer(adapter_name, **kwargs)
            return
        if not is_linear(target):  # excluded by _resolve; a guard against a changed PEFT
            raise TypeError(f"cannot adapt {current_key!r}: {type(target).__name__} is not a linear layer")
        new = MoReLinear(target, adapter_name, quantization_kwargs=get_quantization_kwargs(self.model), **kwargs)
        new.train(target.training)  # the mode of the module it wraps (eval mode stays eval mode)
        if adapter_name not in self.active_adapters:
            new.requires_grad_(False)
        self._replace_module(parent, target_name, new, target)

    def _mark_only_adapters_as_trainable(self, model: nn.Module) -> None:
        super()._mark_only_adapters_as_trainable(model)
        for module in model.modules():  # the frozen init M of a projection adapter never trains
            if isinstance(module, MoReLayer):
                module.more_init.requires_grad_(False)

    def delete_adapter(self, adapter_name: str) -> None:
        """PEFT's, then every module to save computes with the new active adapter's copy (PEFT
        switches only the modules the deleted adapter saved: a head saved by the new active
        adapter alone kept computing the original head)."""
        super().delete_adapter(adapter_name)
        if self.active_adapter:
            _set_adapter(self.model, self.active_adapter)

    # -- merge / unload ---------------------------------------------------------------------------
    def merge_adapter(self, adapter_names: list[str] | None = None, safe_merge: bool = False) -> None:
        """Merge into every adapted layer; with ``safe_merge``, all are checked first (nothing is
        merged when one would get NaN or inf)."""
        self._check_merge_allowed()
        if safe_merge:
            self._check_finite_merge(adapter_names)
        for module in self.model.modules():
            if isinstance(module, MoReLayer):
                module.merge(adapter_names=adapter_names, safe_merge=safe_merge)

    def _check_finite_merge(self, adapter_names: list[str] | None) -> None:
        for name, module in self.model.named_modules():
            if not isinstance(module, MoReLinear) or module.merged:
                continue
            names = [a for a in (adapter_names or module.active_adapters) if a in module.more_update]
            if not names:
                continue
            delta = sum(module.get_delta_weight(a) for a in names)
            if not bool(torch.isfinite(delta).all()):
                raise ValueError(f"safe_merge: layer {name!r} would get NaN or inf weights; nothing merged")

    def _unload_and_optionally_merge(
        self, merge: bool = True, progressbar: bool = False, safe_merge: bool = False,
        adapter_names: list[str] | None = None,
    ):  # fmt: skip
        if merge:
            self._check_merge_allowed()
            if safe_merge:
                self._check_finite_merge(adapter_names)
        tied_before = _tied_embeddings(self.model)
        for module in self.model.modules():
            if not isinstance(module, MoReLinear):
                continue
            if merge:
                module.merge(safe_merge=safe_merge, adapter_names=adapter_names)
                module.fold_merge()
            else:
                if module.merged:
                    module.unmerge()
                module.restore_original_weight()
        model = super()._unload_and_optionally_merge(merge=False, progressbar=progressbar)
        if tied_before and not _tied_embeddings(model):
            _untie_config(model)
        return model


def _names_a_module(model: nn.Module, name: str) -> bool:
    try:
        return bool(resolve_modules_to_save(model, [name]))
    except TargetError:
        return False


def _check_modules_to_save(model: nn.Module, saved: list[str]) -> None:
    """A module to save is copied per adapter: it must not hold another adapter's layers (PEFT
    would deep-copy them into the copy, where no saved adapter finds them again)."""
    for name in saved:
        module = model.get_submodule(name)
        if isinstance(module, AuxiliaryTrainingWrapper):  # saved by another adapter too: PEFT adds a copy
            continue
        inside = [n for n, m in module.named_modules() if isinstance(m, (BaseTunerLayer, AuxiliaryTrainingWrapper))]
        if inside:
            where = ", ".join(repr(f"{name}.{n}" if n else name) for n in inside[:3])
            raise ValueError(
                f"modules_to_save entry {name!r} contains adapter layers ({where}) of another adapter; "
                f"save a module without them, or exclude those layers from that adapter's target_modules"
            )


def _tied_embeddings(model: nn.Module) -> bool:
    """Whether the output head shares its weight with the input embeddings (an adapted head:
    its weight from before merging)."""
    try:
        inp, out = model.get_input_embeddings(), model.get_output_embeddings()
    except (AttributeError, NotImplementedError):
        return False
    if isinstance(out, MoReLinear):
        out_weight = out.unmerged_weight
    elif isinstance(out, AuxiliaryTrainingWrapper):
        out_weight = getattr(out.original_module, "weight", None)
    else:
        out_weight = getattr(out, "weight", None)
    in_weight = getattr(inp, "weight", None)
    if not isinstance(out_weight, torch.Tensor) or not isinstance(in_weight, torch.Tensor):
        return False
    return storage_key(out_weight) == storage_key(in_weight)


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
        "the merged output head no longer shares its weight with the input embeddings; the model's config now has "
        "tie_word_embeddings=False so that save_pretrained/from_pretrained keep them apart",
        stacklevel=4,
    )
