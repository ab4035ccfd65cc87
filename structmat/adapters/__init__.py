"""MoRe adapters for transformers models: a PEFT method, and a small functional API.

``import structmat.adapters`` registers MoRe with PEFT (``peft_type="MORE"``), so that
``peft.get_peft_model(model, MoReConfig(...))``, ``PeftModel.from_pretrained``, the transformers
``Trainer`` and TRL work as for LoRA. :func:`apply_more` does the same in place (like
``peft.inject_adapter_in_model``); the functions below take either kind of model.
"""

from .api import (
    active_adapter,
    add_adapter,
    apply_more,
    count_parameters,
    delete_adapter,
    disable_adapter,
    get_adapter_parameters,
    list_adapters,
    merge,
    merge_and_unload,
    more_layers,
    print_trainable_parameters,
    set_adapter,
    unload,
    unmerge,
)
from .config import MoReConfig
from .export import to_lora
from .io import from_pretrained, load_adapter, load_adapters, read_adapter_config, save_adapter
from .layer import MoReLinear, allow_nonfinite_weights
from .lora import apply_lora
from .model import MoReModel
from .peft_registration import register as _register
from .reference import import_reference_checkpoint
from .replace import MonarchLinear, replace_with_monarch

_register(MoReConfig, MoReModel)

__all__ = [
    "MoReConfig",
    "MoReLinear",
    "MoReModel",
    "MonarchLinear",
    "active_adapter",
    "add_adapter",
    "allow_nonfinite_weights",
    "apply_lora",
    "apply_more",
    "count_parameters",
    "delete_adapter",
    "disable_adapter",
    "from_pretrained",
    "get_adapter_parameters",
    "import_reference_checkpoint",
    "list_adapters",
    "load_adapter",
    "load_adapters",
    "merge",
    "merge_and_unload",
    "more_layers",
    "print_trainable_parameters",
    "read_adapter_config",
    "replace_with_monarch",
    "save_adapter",
    "set_adapter",
    "to_lora",
    "unload",
    "unmerge",
]
