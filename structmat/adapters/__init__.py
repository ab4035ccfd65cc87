"""MoRe adapters for transformers models, with PEFT's vocabulary, and the PEFT LoRA baseline.

``MoReTrainer`` (the Hugging Face ``Trainer`` with adapter-only checkpoints) is imported on first
use, so that ``import structmat.adapters`` does not import the ``Trainer`` machinery.
"""

from .config import MoReConfig
from .io import from_pretrained, load_adapter, load_adapters, read_adapter_config, save_adapter
from .layer import MoReLinear
from .lora import apply_lora
from .model import (
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
from .reference import import_reference_checkpoint
from .replace import MonarchLinear, replace_with_monarch
from .saved_modules import ModulesToSaveWrapper

__all__ = [
    "MoReConfig",
    "MoReLinear",
    "MoReTrainer",
    "ModulesToSaveWrapper",
    "MonarchLinear",
    "active_adapter",
    "add_adapter",
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
    "unload",
    "unmerge",
]


def __getattr__(name: str):
    if name == "MoReTrainer":
        from .trainer import MoReTrainer

        return MoReTrainer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
