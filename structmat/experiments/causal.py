"""Fine-tune a causal LM (SmolLM2-135M-Instruct) on a BIG-bench task with MoRe or LoRA, offline.

Prompt ``"Q: {question}\\nA:"`` (strategyqa adds " Answer Yes or No." to the question), target
``" {answer}"`` followed by the end-of-sequence token. The loss covers the answer tokens only
(prompt and padding are labelled -100; the output head runs on the answer columns only).
Evaluation is greedy decoding and exact match of the first generated line against the answer.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

from ..adapters import count_parameters
from ..checks import check_positive_int
from ..progress import progress_bar
from .bigbench import TASK_FILES, QAExample, load_bigbench
from .data import example_id
from .loop import Batch, TrainStats, train, training_memory_bytes, world
from .methods import adapt, save_trained
from .models import load_smollm2

QKV = ("q_proj", "k_proj", "v_proj")


def prompt_for(task: str, question: str) -> str:
    if task == "strategyqa":
        question = f"{question} Answer Yes or No."
    return f"Q: {question}\nA:"


def normalise_answer(text: str) -> str:
    """First line, stripped, without a trailing period, case-folded: what exact match compares."""
    return text.strip().split("\n", 1)[0].strip().rstrip(".").strip().casefold()


@dataclass
class CausalConfig:
    """One causal-LM fine-tuning run: task, method (MoRe block rank / LoRA rank), targets, optimisation."""

    task: str = "arithmetic"  # a key of bigbench.TASK_FILES
    method: str = "more"  # "more" | "lora"
    rank: int = 4
    nblocks: int = 4
    targets: tuple[str, ...] | str = QKV  # names, or "all-linear"
    lr: float = 3e-3
    epochs: int = 1
    batch_size: int = 16
    train_size: int = 600
    test_size: int = 200
    max_new_tokens: int = 6
    seed: int = 0
    device: str = "cpu"
    save_adapter: str | None = None  # folder to save the trained adapter to (rank 0)
    evaluate_before: bool = False
    progress: bool | None = None  # None: a bar on a terminal only; True: also as lines in pipes and logs (the CLI)

    def __post_init__(self) -> None:
        if self.task not in TASK_FILES:
            raise ValueError(f"task must be one of {sorted(TASK_FILES)}, got {self.task!r}")
        if self.method not in ("more", "lora"):
            raise ValueError(f"method must be 'more' or 'lora', got {self.method!r}")
        for name in ("rank", "nblocks", "epochs", "batch_size", "train_size", "test_size", "max_new_tokens"):
            check_positive_int(name, getattr(self, name))
        if not (isinstance(self.lr, float | int) and self.lr > 0):
            raise ValueError(f"lr must be a positive number, got {self.lr!r}")


def make_lm_batches(
    task: str, examples: Sequence[QAExample], tokenizer, batch_size: int, shuffle_seed: int | None
) -> list[Batch]:
    """Left-padded ``input_ids`` / ``attention_mask`` / ``labels`` (answer tokens only, else
    -100), each ``(batch, longest)``. Left padding puts every answer in the last columns, so
    :func:`answer_loss` needs the output head only there (and generation pads the same way)."""
    order = list(range(len(examples)))
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(order)
    pad = tokenizer.pad_token_id
    batches = []
    for i in range(0, len(order), batch_size):
        rows = []
        for j in order[i : i + batch_size]:
            ex = examples[j]
            prompt = tokenizer(prompt_for(task, ex.question), add_special_tokens=False).input_ids
            answer = tokenizer(" " + ex.answer, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
            rows.append((prompt + answer, [-100] * len(prompt) + answer))
        width = max(len(ids) for ids, _ in rows)
        batches.append(
            {
                "input_ids": torch.tensor([[pad] * (width - len(ids)) + ids for ids, _ in rows]),
                "attention_mask": torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids, _ in rows]),
                "labels": torch.tensor([[-100] * (width - len(lab)) + lab for _, lab in rows]),
            }
        )
    return batches


def answer_loss(model, batch: Batch) -> torch.Tensor:
    """Mean cross-entropy of the answer tokens, the vocabulary head applied only to the last
    columns that hold answers (``logits_to_keep``): the same value as ``model(**batch).loss``
    for left-padded batches, without computing 49k-way logits for every prompt token."""
    labels = batch["labels"]  # (batch, width)
    has_answer = (labels != -100).any(0).nonzero()
    if has_answer.numel() == 0:
        raise ValueError("batch has no answer tokens (every label is -100)")
    keep = labels.shape[1] - int(has_answer[0])  # answer columns
    logits = model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], logits_to_keep=keep + 1
    ).logits  # (batch, keep + 1, vocab): column t predicts token t + 1
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]).float(), labels[:, -keep:].reshape(-1), ignore_index=-100
    )


@torch.no_grad()
def generate_answers(
    model, tokenizer, task: str, questions: Sequence[str], max_new_tokens: int, batch_size: int = 64, progress=None
) -> list[str]:
    """Greedy continuations of each question's prompt (left-padded batches), normalised."""
    model.eval()
    device = next(model.parameters()).device
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    answers: list[str] = []
    try:
        for i in progress_bar(range(0, len(questions), batch_size), show=progress, desc="generate", leave=False):
            prompts = [prompt_for(task, q) for q in questions[i : i + batch_size]]
            enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            out = model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
            texts = tokenizer.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
            answers += [normalise_answer(t) for t in texts]
    finally:
        tokenizer.padding_side = side
    return answers


def answer_predictions(
    model, tokenizer, task: str, examples: Sequence[QAExample], max_new_tokens: int, progress=None
) -> dict:
    """``{"ids", "gold", "pred"}``: the normalised greedy answer to every question of
    ``examples`` and its normalised reference (the record format of :mod:`structmat.analysis.paired`)."""
    got = generate_answers(model, tokenizer, task, [e.question for e in examples], max_new_tokens, progress=progress)
    return {
        "ids": [example_id(e.question) for e in examples],
        "gold": [normalise_answer(e.answer) for e in examples],
        "pred": got,
    }


def exact_match(model, tokenizer, task: str, examples: Sequence[QAExample], max_new_tokens: int, progress=None):
    """Fraction of ``examples`` whose greedy answer equals the reference (see :func:`normalise_answer`)."""
    p = answer_predictions(model, tokenizer, task, examples, max_new_tokens, progress)
    return sum(g == y for g, y in zip(p["gold"], p["pred"], strict=True)) / len(examples)


def run_causal(
    cfg: CausalConfig,
    data: tuple[list[QAExample], list[QAExample]] | None = None,
    base=None,
    eval_sets: dict[str, Sequence[QAExample]] | None = None,
) -> dict:
    """Train and evaluate one configuration; returns a dict of settings and measurements.

    ``base``: an already loaded ``(model, tokenizer)`` to adapt (it is modified in place);
    by default SmolLM2 is loaded (from the cache after the first time). ``eval_sets`` (name ->
    examples): the result also holds ``"predictions"`` (name -> :func:`answer_predictions`) and
    ``"scores"`` (name -> exact match), and ``"exact_match"`` is the ``"test"`` score. A run
    whose loss becomes NaN or inf stops there and is still evaluated (``"diverged"``).
    """
    train_set, test_set = data or load_bigbench(cfg.task)
    train_set, test_set = train_set[: cfg.train_size], test_set[: cfg.test_size]
    torch.manual_seed(cfg.seed)
    model, tokenizer = base or load_smollm2()
    model.to(cfg.device)
    before = (
        exact_match(model, tokenizer, cfg.task, test_set, cfg.max_new_tokens, cfg.progress)
        if cfg.evaluate_before and world()[0] == 0
        else None
    )
    model = adapt(model, cfg.method, cfg.targets, cfg.rank, cfg.nblocks)
    trainable, total = count_parameters(model)
    batches = [
        b
        for e in range(cfg.epochs)
        for b in make_lm_batches(cfg.task, train_set, tokenizer, cfg.batch_size, cfg.seed * 1000 + e)
    ]
    memory = training_memory_bytes(model, batches[0], answer_loss)
    torch.manual_seed(cfg.seed)
    stats = TrainStats()
    try:
        train(
            model, batches, lr=cfg.lr, loss_fn=answer_loss, progress=cfg.progress, desc=f"{cfg.method} r={cfg.rank}",
            stats=stats,
        )  # fmt: skip
        diverged = None
    except FloatingPointError as err:  # the record says so; the model is evaluated as it is
        diverged = str(err)
        model.eval()
    if cfg.save_adapter and world()[0] == 0:
        save_trained(model, cfg.method, cfg.save_adapter)
    preds, scores = {}, {}
    if eval_sets and world()[0] == 0:
        for name, examples in eval_sets.items():
            p = answer_predictions(model, tokenizer, cfg.task, examples, cfg.max_new_tokens, cfg.progress)
            preds[name] = p
            scores[name] = sum(g == y for g, y in zip(p["gold"], p["pred"], strict=True)) / len(examples)
        after = scores.get("test")
    else:
        after = exact_match(model, tokenizer, cfg.task, test_set, cfg.max_new_tokens, cfg.progress)
    result = asdict(cfg) | {
        "model": "SmolLM2-135M-Instruct",
        "trainable_params": trainable,
        "total_params": total,
        "exact_match_before": before,
        "exact_match": after if world()[0] == 0 else None,
        "median_step_seconds": stats.median_step_seconds,
        "train_memory_mb": memory / 2**20,
        "final_loss": sum(stats.losses[-10:]) / len(stats.losses[-10:]),
        "steps": len(stats.losses),
        "diverged": diverged,
        "train_examples": len(train_set),
        "test_examples": len(test_set),
    }
    if preds:
        result["predictions"], result["scores"] = preds, scores
    result["targets"] = cfg.targets if isinstance(cfg.targets, str) else list(cfg.targets)
    return result
