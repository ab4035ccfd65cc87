"""How much of a real fine-tuning update does each structure capture?

Fully fine-tune all-MiniLM-L6-v2 on Rotten Tomatoes (every weight, AdamW), take every encoder
linear layer's update ``ΔW = W_ft - W_0`` and project it optimally onto each registered structure
family (closed-form fits: low rank, Monarch at several ``nblocks``, Kronecker) at equal parameter
budgets (those of LoRA ranks 1-32 on that layer). Two measurements:

- **captured energy** per layer, ``1 - ||ΔW - P(ΔW)||² / ||ΔW||²`` (from the fit's relative error),
  by layer type and depth;
- **test accuracy** of the base model plus the projected updates of all layers at once (the
  fine-tuned model's other parameters: embeddings, norms, biases, head), against the base plus
  the full ``ΔW`` (the fine-tuned model) and plus nothing.

Where MoRe's structure suits what fine-tuning learns, Monarch captures more than low rank at the
same budget; where it does not, less. The tie rule of :mod:`structmat.analysis.compare` decides.
"""

from __future__ import annotations

import copy
import re
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from ..analysis.compare import TIE_MARGIN, compare_errors
from ..analysis.curves import approximation_curve
from ..progress import progress_bar
from ..registry import get_structure
from .classify import make_batches, predictions
from .data import TextDataset, rotten_tomatoes_splits
from .loop import train
from .models import load_minilm_classifier

LORA_RANKS = (1, 2, 4, 8, 16, 32)  # budgets: a LoRA of these ranks on each layer
ACCURACY_RANKS = (1, 4, 16)  # the budgets at which the whole model is evaluated
LAYER_TYPES = {  # encoder module suffix -> the name in tables
    "attention.self.query": "query",
    "attention.self.key": "key",
    "attention.self.value": "value",
    "attention.output.dense": "attn out",
    "intermediate.dense": "mlp in",
    "output.dense": "mlp out",
}


@dataclass
class CaptureConfig:
    train_size: int = 4000
    epochs: int = 3
    lr: float = 5e-5
    batch_size: int = 32
    max_length: int = 64
    seed: int = 0
    lora_ranks: tuple[int, ...] = LORA_RANKS
    accuracy_ranks: tuple[int, ...] = ACCURACY_RANKS
    nblocks: tuple[int, ...] = (2, 4, 8)
    test_size: int | None = None  # None: the whole test split
    progress: bool | None = None
    timing: dict[str, float] = field(default_factory=dict)


def layer_type(name: str) -> tuple[str, int]:
    """``("query", 3)`` for ``bert.encoder.layer.3.attention.self.query``."""
    depth = int(re.search(r"layer\.(\d+)\.", name).group(1))
    kind = next(v for k, v in LAYER_TYPES.items() if name.endswith(k))
    return kind, depth


def encoder_linears(model: nn.Module) -> dict[str, nn.Linear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear) and ".encoder.layer." in n}


def finetune(cfg: CaptureConfig, data: tuple[TextDataset, TextDataset, TextDataset]):
    """``(base, fine_tuned, tokenizer)``: all-MiniLM-L6-v2 before and after full fine-tuning."""
    train_set, _, _ = data
    torch.manual_seed(cfg.seed)
    base, tokenizer = load_minilm_classifier(num_labels=2)
    tuned = copy.deepcopy(base)
    for p in tuned.parameters():
        p.requires_grad_(True)
    batches = [
        b
        for e in range(cfg.epochs)
        for b in make_batches(
            train_set.head(cfg.train_size), tokenizer, cfg.batch_size, cfg.max_length, 1000 * cfg.seed + e
        )
    ]
    torch.manual_seed(cfg.seed)
    t0 = time.time()
    train(tuned, batches, lr=cfg.lr, weight_decay=0.01, progress=cfg.progress, desc="full fine-tune")
    cfg.timing["finetune_s"] = time.time() - t0
    return base.eval(), tuned.eval(), tokenizer


def accuracy(model, data: TextDataset, tokenizer, max_length: int) -> float:
    p = predictions(model, data, tokenizer, max_length)
    return sum(g == y for g, y in zip(p["gold"], p["pred"], strict=True)) / len(p["gold"])


def capture(cfg: CaptureConfig, data=None) -> dict[str, Any]:
    """The whole measurement; a JSON-able dict (``layers``: one row per layer, family and budget;
    ``accuracy``: one row per family and budget)."""
    data = data or rotten_tomatoes_splits()
    _, val, test = data
    test = test if cfg.test_size is None else test.head(cfg.test_size)
    base, tuned, tokenizer = finetune(cfg, data)
    W0 = {n: m.weight.detach().double() for n, m in encoder_linears(base).items()}
    W1 = {n: m.weight.detach().double() for n, m in encoder_linears(tuned).items()}
    rows = []
    chosen: dict[tuple[str, int], dict[str, Any]] = {}  # (layer, lora rank) -> {series: hparams}
    for name in progress_bar(list(W0), desc="project ΔW", show=cfg.progress):
        delta = W1[name] - W0[name]  # (out, in)
        out_f, in_f = delta.shape
        budgets = [r * (in_f + out_f) for r in cfg.lora_ranks]
        kind, depth = layer_type(name)
        for point in approximation_curve(delta, budgets, nblocks=cfg.nblocks):
            rank = cfg.lora_ranks[budgets.index(point.budget)]
            rows.append(
                {"layer": name, "type": kind, "depth": depth, "lora_rank": rank, "budget": point.budget,
                 "series": point.structure, "family": point.family, "hparams": point.hparams, "params": point.params,
                 "rel_error": point.rel_error, "captured": 1 - point.rel_error**2,
                 "delta_norm": float(torch.linalg.matrix_norm(delta)),
                 "weight_norm": float(torch.linalg.matrix_norm(W0[name]))}
            )  # fmt: skip
            chosen.setdefault((name, rank), {})[point.structure] = (point.family, point.hparams)
    t0 = time.time()
    acc = [
        {"series": "no ΔW on the linear layers", "lora_rank": None,
         "accuracy": accuracy(_with(tuned, W0, {}), test, tokenizer, cfg.max_length)},
        {"series": "full ΔW (fine-tuned)", "lora_rank": None,
         "accuracy": accuracy(tuned, test, tokenizer, cfg.max_length)},
    ]  # fmt: skip
    series = sorted({s for picks in chosen.values() for s in picks})
    for rank in cfg.accuracy_ranks:
        for s in series:
            projected = {}
            for name in W0:
                family, hp = chosen[(name, rank)].get(s, (None, None))
                if family is None or not hp:
                    continue
                projected[name] = get_structure(family).fit(W1[name] - W0[name], **hp).to_dense()
            if len(projected) < len(W0):  # the series has no member at this budget on some layer
                continue
            model = _with(tuned, W0, projected)
            acc.append({"series": s, "lora_rank": rank, "accuracy": accuracy(model, test, tokenizer, cfg.max_length)})
    cfg.timing["accuracy_s"] = time.time() - t0
    return {"config": asdict(cfg), "test_examples": len(test), "layers": rows, "accuracy": acc}


def _with(tuned: nn.Module, W0: dict, projected: dict) -> nn.Module:
    """The fine-tuned model with each encoder linear weight replaced by ``W0 + projected``
    (``W0`` alone where nothing is projected)."""
    model = copy.deepcopy(tuned)
    with torch.no_grad():
        for name, module in encoder_linears(model).items():
            new = W0[name] + projected.get(name, torch.zeros_like(W0[name]))
            module.weight.copy_(new.to(module.weight.dtype))
    return model.eval()


def summary_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Mean captured energy per (layer type, series, LoRA-rank budget)."""
    groups: dict[tuple, list[float]] = {}
    for row in result["layers"]:
        groups.setdefault((row["type"], row["series"], row["lora_rank"]), []).append(row["captured"])
    order = list(LAYER_TYPES.values())
    keys = sorted(groups, key=lambda k: (order.index(k[0]), k[2], k[1]))
    return [
        {"type": t, "series": s, "lora_rank": r, "captured": sum(groups[t, s, r]) / len(groups[t, s, r]),
         "layers": len(groups[t, s, r])}
        for t, s, r in keys
    ]  # fmt: skip


def verdicts(result: dict[str, Any], monarch_series: str = "monarch(nblocks=4)") -> list[str]:
    """Sentences comparing MoRe's Monarch with low rank per layer type and budget, by the tie
    rule on the mean residual energy (``1 - captured``): "better", "worse" or "tied"."""
    means = {(r["type"], r["series"], r["lora_rank"]): 1 - r["captured"] for r in summary_rows(result)}
    out = []
    for kind in LAYER_TYPES.values():
        words = {}
        for rank in result["config"]["lora_ranks"]:
            a, b = means.get((kind, monarch_series, rank)), means.get((kind, "lowrank", rank))
            if a is None or b is None:
                continue
            c = compare_errors(max(a, 0.0) ** 0.5, max(b, 0.0) ** 0.5, TIE_MARGIN)
            words[rank] = {-1: "Monarch captures more", 1: "low rank captures more", 0: "tied"}[c]
        if words:
            out.append(f"{kind}: " + ", ".join(f"LoRA-r{r} budget: {w}" for r, w in words.items()))
    return out
