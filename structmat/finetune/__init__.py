"""Offline fine-tuning recipes: MiniLM on Rotten Tomatoes with MoRe or LoRA."""

from .classify import FinetuneConfig, run_classification
from .data import load_rotten_tomatoes
from .loop import train, training_memory_bytes
from .models import load_minilm_classifier, minilm_path

__all__ = [
    "FinetuneConfig",
    "load_minilm_classifier",
    "load_rotten_tomatoes",
    "minilm_path",
    "run_classification",
    "train",
    "training_memory_bytes",
]
