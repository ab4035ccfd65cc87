"""``MoReTrainer``: the Hugging Face ``Trainer`` with adapter-only checkpoints.

The plain ``Trainer`` saves a model it does not know as a full state dict (every frozen weight,
under the adapted module names), which plain ``from_pretrained`` then loads as a *partial* model
with re-initialised layers. This subclass, as AdapterHub's ``AdapterTrainer`` does, saves and
loads only what was trained, in :func:`~structmat.adapters.save_adapter`'s format:

- every checkpoint (and ``trainer.save_model()``) holds the adapters and the trained copies of the
  modules to save, plus the tokenizer and training arguments, and is written by the main process
  only (``args.should_save``);
- ``train(resume_from_checkpoint=...)`` and ``load_best_model_at_end=True`` load the adapters
  back with :func:`~structmat.adapters.load_adapters` (checked before anything changes).

Everything else (optimizer, scheduler and RNG states, rotation, logging) is the ``Trainer``'s own.
"""

from __future__ import annotations

import os

import torch
from torch import nn
from transformers import Trainer
from transformers.trainer import TRAINING_ARGS_NAME

from .io import load_adapters, save_adapter
from .model import adapter_configs


class MoReTrainer(Trainer):
    """``Trainer`` whose checkpoints hold the MoRe adapters only (see the module doc).

    Use it as the ``Trainer``: ``MoReTrainer(model=apply_more(model, ...), args=..., ...)``. A model
    without a MoRe adapter is refused up front (its checkpoints would hold nothing).
    """

    def __init__(self, model: nn.Module | None = None, *args, **kwargs):
        if (model is not None or "model_init" not in kwargs) and not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if isinstance(model, nn.Module) and any(p.is_meta for p in model.parameters()):
            raise ValueError("model has meta tensors (no data); load its weights first")
        if model is not None and not adapter_configs(model):
            raise ValueError(
                f"MoReTrainer needs a model with a MoRe adapter (apply_more or load_adapter first); "
                f"{type(model).__name__} has none. For full fine-tuning use transformers.Trainer"
            )
        super().__init__(model, *args, **kwargs)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if not self.args.should_save:
            return
        os.makedirs(output_dir, exist_ok=True)
        save_adapter(self.model, output_dir, is_main_process=True)  # should_save said so
        tokenizer = self.processing_class
        if tokenizer is None and getattr(self.data_collator, "tokenizer", None) is not None:
            tokenizer = self.data_collator.tokenizer
        if tokenizer is not None:
            tokenizer.save_pretrained(output_dir)
        torch.save(self.args, os.path.join(output_dir, TRAINING_ARGS_NAME))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        load_adapters(self.model if model is None else model, resume_from_checkpoint)

    def _load_best_model(self) -> None:
        load_adapters(self.model, self.state.best_model_checkpoint)
