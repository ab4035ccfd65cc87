"""MoRe adapters for transformers models, with PEFT's vocabulary, and the PEFT LoRA baseline."""

from .config import MoReConfig
from .io import load_adapter, read_adapter_config, save_adapter
from .layer import MoReLinear
from .lora import apply_lora
from .model import (
    apply_more,
    count_parameters,
    disable_adapter,
    get_adapter_parameters,
    merge,
    merge_and_unload,
    more_layers,
    print_trainable_parameters,
    unload,
    unmerge,
)

__all__ = [
    "MoReConfig",
    "MoReLinear",
    "apply_lora",
    "apply_more",
    "count_parameters",
    "disable_adapter",
    "get_adapter_parameters",
    "load_adapter",
    "merge",
    "merge_and_unload",
    "more_layers",
    "print_trainable_parameters",
    "read_adapter_config",
    "save_adapter",
    "unload",
    "unmerge",
]
