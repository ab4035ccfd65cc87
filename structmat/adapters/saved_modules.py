"""``ModulesToSaveWrapper``: a module trained in full (a classifier head) with its original kept.

As PEFT's wrapper of the same name: the original module stays untouched (frozen) and every
adapter trains its own copy, so ``disable_adapter`` computes the base model exactly, head
included, and switching adapters switches heads.
"""

from __future__ import annotations

import copy

from torch import nn

from .layer import check_adapter_name


class ModulesToSaveWrapper(nn.Module):
    """``forward`` runs the active adapter's copy of ``original_module``, or the original itself
    when disabled or when the active adapter has no copy. Attributes not found on the wrapper
    (``weight``, ``out_features``, ...) are read from the module that ``forward`` would run."""

    def __init__(self, module: nn.Module, adapter_name: str):
        if not isinstance(module, nn.Module):
            raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
        super().__init__()
        self.original_module = module
        self.modules_to_save = nn.ModuleDict()
        self.active_adapter: str | None = None
        self.disabled = False
        self.add_adapter(adapter_name)

    def add_adapter(self, adapter_name: str) -> None:
        """A trainable copy of the original module for ``adapter_name``; the first becomes active."""
        check_adapter_name(adapter_name)
        if adapter_name in self.modules_to_save:
            raise ValueError(f"this module already has a copy for adapter {adapter_name!r}")
        self.modules_to_save[adapter_name] = copy.deepcopy(self.original_module)
        if self.active_adapter is None:
            self.active_adapter = adapter_name

    def delete_adapter(self, adapter_name: str) -> None:
        del self.modules_to_save[adapter_name]
        if self.active_adapter == adapter_name:
            self.active_adapter = next(iter(self.modules_to_save), None)

    def set_adapter(self, adapter_name: str) -> None:
        self.active_adapter = adapter_name

    @property
    def active_module(self) -> nn.Module:
        if self.disabled or self.active_adapter not in self.modules_to_save:
            return self.original_module
        return self.modules_to_save[self.active_adapter]

    def forward(self, *args, **kwargs):
        return self.active_module(*args, **kwargs)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if "_modules" not in self.__dict__ or name in ("original_module", "modules_to_save", "active_module"):
                raise  # not set up yet (deepcopy, unpickling), or a real error inside active_module
            return getattr(self.active_module, name)

    def extra_repr(self) -> str:
        return f"active_adapter={self.active_adapter!r}, disabled={self.disabled}"
