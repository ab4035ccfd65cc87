"""Offline fine-tuning recipes, MoRe vs LoRA:

- sequence classification: all-MiniLM-L6-v2 on Rotten Tomatoes (:func:`run_classification`);
- causal LM: SmolLM2-135M-Instruct on BIG-bench 3-digit addition / strategyqa (:func:`run_causal`).
"""

from .bigbench import load_bigbench
from .causal import CausalConfig, run_causal
from .classify import FinetuneConfig, run_classification
from .data import load_rotten_tomatoes
from .loop import train, training_memory_bytes
from .models import load_minilm_classifier, load_smollm2, minilm_path

__all__ = [
    "CausalConfig",
    "FinetuneConfig",
    "load_bigbench",
    "load_minilm_classifier",
    "load_rotten_tomatoes",
    "load_smollm2",
    "minilm_path",
    "run_causal",
    "run_classification",
    "train",
    "training_memory_bytes",
]
