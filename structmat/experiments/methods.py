"""The fine-tuning methods the recipes compare, applied from a config's fields."""

from __future__ import annotations

from torch import nn

from ..adapters import apply_lora, apply_more, save_adapter


def adapt(model: nn.Module, method: str, targets, rank: int, nblocks: int) -> nn.Module:
    """``"more"``: :func:`apply_more`; ``"lora"``: PEFT LoRA (alpha = 2*rank); ``"none"``: train
    only the classifier head. ``targets``: module names or a PEFT-style string ("all-linear")."""
    targets = targets if isinstance(targets, str) else list(targets)
    if method == "more":
        return apply_more(model, targets, nblocks=nblocks, rank=rank)
    if method == "lora":
        return apply_lora(model, targets, rank=rank)
    if method == "none":
        for n, p in model.named_parameters():
            p.requires_grad_(n.startswith("classifier."))
        return model
    raise ValueError(f"method must be 'more', 'lora' or 'none', got {method!r}")


def save_trained(model: nn.Module, method: str, path: str) -> None:
    """Save what ``adapt`` made trainable: MoRe with :func:`~structmat.adapters.save_adapter`,
    LoRA with PEFT's ``save_pretrained`` (each in its own library's folder format)."""
    if method == "more":
        save_adapter(model, path)
    elif method == "lora":
        model.save_pretrained(path)
    else:
        raise ValueError(f"save_adapter needs method 'more' or 'lora' (an adapter to save), got {method!r}")
