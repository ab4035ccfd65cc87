"""Fine-tune all-MiniLM-L6-v2 on Rotten Tomatoes with MoRe or LoRA, offline; report accuracy,
trainable parameters, step time and training memory."""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass

import torch

from ..adapters import count_parameters
from ..checks import check_positive_int
from ..progress import progress_bar
from .data import TextDataset, load_rotten_tomatoes
from .loop import TrainStats, to_device, train, training_memory_bytes, world
from .methods import adapt, save_trained
from .models import load_minilm_classifier


@dataclass
class FinetuneConfig:
    method: str = "more"  # "more" | "lora" | "none" (head only)
    rank: int = 1
    nblocks: int = 4
    targets: tuple[str, ...] | str = ("query", "value")  # names, or "all-linear"
    lr: float = 2e-3
    epochs: int = 1
    batch_size: int = 32
    max_length: int = 64
    train_size: int = 3000
    test_size: int = 1000
    seed: int = 0
    device: str = "cpu"
    save_adapter: str | None = None  # folder to save the trained adapter to (rank 0)
    model_dropout: float | None = None  # the model's hidden/attention dropout (None: its own 0.1)
    progress: bool | None = None  # None: a bar on a terminal only; True: also as lines in pipes and logs (the CLI)

    def __post_init__(self) -> None:
        if self.method not in ("more", "lora", "none"):
            raise ValueError(f"method must be 'more', 'lora' or 'none', got {self.method!r}")
        if self.save_adapter is not None and self.method == "none":
            raise ValueError("save_adapter needs method 'more' or 'lora': method 'none' trains no adapter")
        for name in ("rank", "nblocks", "epochs", "batch_size", "max_length", "train_size", "test_size"):
            check_positive_int(name, getattr(self, name))


def make_batches(data: TextDataset, tokenizer, batch_size: int, max_length: int, shuffle_seed: int | None):
    order = list(range(len(data)))
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(order)
    batches = []
    for i in range(0, len(order), batch_size):
        idx = order[i : i + batch_size]
        enc = tokenizer(
            [data.texts[j] for j in idx], padding=True, truncation=True, max_length=max_length, return_tensors="pt"
        )
        enc = {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        enc["labels"] = torch.tensor([data.labels[j] for j in idx])
        batches.append(enc)
    return batches


@torch.no_grad()
def predict(model, batches, progress: bool | None = None) -> list[int]:
    """The predicted label of every example of ``batches``, in order."""
    model.eval()
    preds: list[int] = []
    device = next(model.parameters()).device
    for batch in progress_bar(batches, show=progress, desc="eval", leave=False):
        batch = to_device(batch, device)
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        preds += logits.argmax(-1).tolist()
    return preds


def accuracy(model, batches, progress: bool | None = None) -> float:
    gold = [y for b in batches for y in b["labels"].tolist()]
    preds = predict(model, batches, progress)
    return sum(p == g for p, g in zip(preds, gold, strict=True)) / len(gold)


def predictions(model, data: TextDataset, tokenizer, max_length: int, progress: bool | None = None) -> dict:
    """``{"ids", "gold", "pred"}``: the model's label for every example of ``data`` (the record
    format of :mod:`structmat.analysis.paired`)."""
    pred = predict(model, make_batches(data, tokenizer, 64, max_length, None), progress)
    return {"ids": data.ids, "gold": list(data.labels), "pred": pred}


def run_classification(
    cfg: FinetuneConfig,
    data: tuple[TextDataset, TextDataset] | None = None,
    eval_sets: dict[str, TextDataset] | None = None,
) -> dict:
    """Train and evaluate one configuration; returns a dict of settings and measurements.

    ``eval_sets`` (name -> data, e.g. ``{"validation": ..., "test": ...}``): the result also
    holds ``"predictions"`` (name -> :func:`predictions`) and ``"scores"`` (name -> accuracy).
    A run whose loss becomes NaN or inf stops there and is still evaluated (``"diverged"``
    says at which step); every other error propagates.
    """
    train_set, test_set = data or load_rotten_tomatoes(seed=0)
    train_set = train_set.head(cfg.train_size)
    test_set = test_set.head(cfg.test_size)
    torch.manual_seed(cfg.seed)
    model, tokenizer = load_minilm_classifier(num_labels=len(train_set.label_names), dropout=cfg.model_dropout)
    model = adapt(model.to(cfg.device), cfg.method, cfg.targets, cfg.rank, cfg.nblocks)
    trainable, total = count_parameters(model)
    adapter = sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and "classifier" not in n)
    batches = [
        b
        for e in range(cfg.epochs)
        for b in make_batches(train_set, tokenizer, cfg.batch_size, cfg.max_length, cfg.seed * 1000 + e)
    ]
    memory = training_memory_bytes(model, batches[0])
    torch.manual_seed(cfg.seed)
    stats = TrainStats()
    try:
        train(model, batches, lr=cfg.lr, progress=cfg.progress, desc=f"{cfg.method} r={cfg.rank}", stats=stats)
        diverged = None
    except FloatingPointError as err:  # the record says so; the model is evaluated as it is
        diverged = str(err)
        model.eval()
    if cfg.save_adapter and world()[0] == 0:
        save_trained(model, cfg.method, cfg.save_adapter)
    result = asdict(cfg) | {
        "trainable_params": trainable,
        "adapter_params": adapter,
        "total_params": total,
        "accuracy": None,
        "median_step_seconds": stats.median_step_seconds,
        "train_memory_mb": memory / 2**20,
        "final_loss": sum(stats.losses[-10:]) / len(stats.losses[-10:]),
        "steps": len(stats.losses),
        "diverged": diverged,
        "train_examples": len(train_set),
        "test_examples": len(test_set),
    }
    if eval_sets and world()[0] == 0:
        preds = {name: predictions(model, d, tokenizer, cfg.max_length, cfg.progress) for name, d in eval_sets.items()}
        result["predictions"] = preds
        result["scores"] = {
            name: sum(g == y for g, y in zip(p["gold"], p["pred"], strict=True)) / len(p["gold"])
            for name, p in preds.items()
        }
        result["accuracy"] = result["scores"].get("test")
    elif world()[0] == 0:  # the evaluation runs on rank 0 only
        result["accuracy"] = accuracy(model, make_batches(test_set, tokenizer, 64, cfg.max_length, None), cfg.progress)
    result["targets"] = cfg.targets if isinstance(cfg.targets, str) else list(cfg.targets)
    return result
