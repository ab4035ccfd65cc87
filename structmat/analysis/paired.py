"""Paired comparison of two fine-tuning methods from their per-example predictions.

Two methods evaluated on the same examples with the same seeds give, per seed ``s`` and example
``i``, outcomes ``a[s, i]`` and ``b[s, i]`` (1 = correct, 0 = wrong). The quantity compared is the
difference of mean accuracies, ``mean(a) - mean(b)``; its uncertainty comes from both the test
examples (a different test set would give other numbers) and the seeds (a different seed would
train another model), so the interval is a **two-way paired bootstrap**: each replicate resamples
seeds and examples with replacement, independently, and keeps the pairing (method A and method B
of one replicate see the same seeds and the same examples). McNemar's exact test per seed asks
whether the two models of that seed disagree asymmetrically.

Verdict words (:func:`verdict`) follow the interval and a stated equivalence margin:

- ``"better"`` / ``"worse"``: the 95% interval excludes 0;
- ``"equivalent"``: it lies inside ``[-margin, +margin]``;
- ``"not distinguishable"``: anything else.

A run is a mapping (a JSON record of :mod:`structmat.experiments.records`) with ``"seed"`` and
``"predictions"``: ``{split: {"ids": [...], "gold": [...], "pred": [...]}}``; an example counts as
correct when its ``pred`` equals its ``gold``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

DEFAULT_MARGIN = 0.01  # equivalence margin: one accuracy point
VERDICTS = ("better", "worse", "equivalent", "not distinguishable")


def verdict(low: float, high: float, margin: float = DEFAULT_MARGIN) -> str:
    """The verdict word for an interval ``[low, high]`` of a difference A − B (see the module doc)."""
    for name, value in (("low", low), ("high", high), ("margin", margin)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value!r}")
    if low > high:
        raise ValueError(f"low must be <= high, got [{low}, {high}]")
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    if low > 0:
        return "better"
    if high < 0:
        return "worse"
    if -margin <= low and high <= margin:
        return "equivalent"
    return "not distinguishable"


def outcomes(runs: Sequence[Mapping], split: str = "test") -> tuple[list[int], list[str], np.ndarray]:
    """``(seeds, example_ids, correct)`` with ``correct`` of shape ``(n_seeds, n_examples)`` (0/1),
    rows in seed order, columns in the first run's example order. Every run must hold the same
    examples (checked), each seed once."""
    if isinstance(runs, Mapping) or not isinstance(runs, Sequence) or not runs:
        raise ValueError("runs must be a non-empty sequence of run records")
    by_seed: dict[int, Mapping] = {}
    for run in runs:
        if not isinstance(run, Mapping) or "seed" not in run or "predictions" not in run:
            raise ValueError("each run must be a mapping with 'seed' and 'predictions'")
        if run["seed"] in by_seed:
            raise ValueError(f"runs hold seed {run['seed']} twice")
        by_seed[run["seed"]] = run
    seeds = sorted(by_seed)
    ids: list[str] | None = None
    rows = []
    for seed in seeds:
        preds = by_seed[seed]["predictions"]
        if split not in preds:
            raise ValueError(f"the run of seed {seed} has no predictions for split {split!r} (it has {sorted(preds)})")
        p = preds[split]
        if not (len(p["ids"]) == len(p["gold"]) == len(p["pred"])):
            raise ValueError(f"the run of seed {seed}: ids, gold and pred differ in length")
        if ids is None:
            ids = list(p["ids"])
            order = {k: i for i, k in enumerate(ids)}
            if len(order) != len(ids):
                raise ValueError(f"the run of seed {seed} lists an example twice")
        elif sorted(p["ids"]) != sorted(ids):
            raise ValueError(f"the run of seed {seed} was evaluated on other {split} examples than seed {seeds[0]}")
        row = np.zeros(len(ids), dtype=np.int8)
        for k, g, y in zip(p["ids"], p["gold"], p["pred"], strict=True):
            row[order[k]] = int(g == y)
        rows.append(row)
    return seeds, ids, np.stack(rows)


def mcnemar_p(a: np.ndarray, b: np.ndarray) -> float:
    """Exact two-sided McNemar p-value of paired 0/1 outcomes ``a`` and ``b`` (one seed)."""
    from scipy.stats import binomtest

    only_a = int(((a == 1) & (b == 0)).sum())
    only_b = int(((a == 0) & (b == 1)).sum())
    if only_a + only_b == 0:
        return 1.0
    return float(binomtest(only_a, only_a + only_b, 0.5).pvalue)


def _bootstrap_means(diff: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Means of ``diff`` (seeds x examples) over ``n_boot`` two-way resamples: seeds and examples
    drawn with replacement independently (multinomial counts as weights, so no copies)."""
    n_seeds, n_examples = diff.shape
    out = np.empty(n_boot)
    chunk = max(1, min(n_boot, 2_000_000 // max(1, n_examples)))
    for start in range(0, n_boot, chunk):
        k = min(chunk, n_boot - start)
        w_ex = rng.multinomial(n_examples, np.full(n_examples, 1 / n_examples), size=k)  # (k, n_examples)
        w_seed = rng.multinomial(n_seeds, np.full(n_seeds, 1 / n_seeds), size=k)  # (k, n_seeds)
        per_seed = w_ex @ diff.T.astype(np.float64)  # (k, n_seeds): each seed's sum over resampled examples
        out[start : start + k] = (per_seed * w_seed).sum(1) / (n_seeds * n_examples)
    return out


@dataclass
class PairedComparison:
    """A − B on the same seeds and examples. ``difference`` and the interval are in accuracy
    units (0.01 = one point)."""

    difference: float
    low: float
    high: float
    verdict: str
    margin: float
    accuracy_a: float
    accuracy_b: float
    seeds: list[int]
    n_examples: int
    mcnemar: dict[int, float] = field(default_factory=dict)  # seed -> exact two-sided p
    confidence: float = 0.95

    def describe(self, points: bool = True) -> str:
        """``+1.2 [-0.3, +2.8] points, not distinguishable`` (``points``: × 100)."""
        s = 100 if points else 1
        unit = " points" if points else ""
        return f"{s * self.difference:+.1f} [{s * self.low:+.1f}, {s * self.high:+.1f}]{unit}, {self.verdict}"


def paired_comparison(
    runs_a: Sequence[Mapping],
    runs_b: Sequence[Mapping],
    split: str = "test",
    *,
    margin: float = DEFAULT_MARGIN,
    confidence: float = 0.95,
    n_boot: int = 10_000,
    seed: int = 0,
) -> PairedComparison:
    """Compare method A (``runs_a``) with method B (``runs_b``) on ``split``.

    The seeds both have are paired (at least 2 are needed; a seed only one method has is
    ignored), and every paired run must hold the same examples. Returns the mean accuracy
    difference A − B, its two-way bootstrap interval (``n_boot`` replicates, percentile method,
    reproducible through ``seed``), McNemar's exact p per seed and the :func:`verdict`.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 100:
        raise ValueError(f"n_boot must be an integer >= 100, got {n_boot!r}")
    seeds_a, ids_a, a = outcomes(runs_a, split)
    seeds_b, ids_b, b = outcomes(runs_b, split)
    common = sorted(set(seeds_a) & set(seeds_b))
    if len(common) < 2:
        raise ValueError(f"runs_a and runs_b must share at least 2 seeds, they share {common}")
    if sorted(ids_a) != sorted(ids_b):
        raise ValueError(f"runs_a and runs_b were evaluated on other {split} examples")
    order = {k: i for i, k in enumerate(ids_b)}
    b = b[:, [order[k] for k in ids_a]]  # columns in A's example order
    a = a[[seeds_a.index(s) for s in common]]
    b = b[[seeds_b.index(s) for s in common]]
    diff = a.astype(np.int16) - b.astype(np.int16)  # (seeds, examples)
    boots = _bootstrap_means(diff, n_boot, np.random.default_rng(seed))
    tail = (1 - confidence) / 2
    low, high = (float(q) for q in np.quantile(boots, [tail, 1 - tail]))
    return PairedComparison(
        difference=float(diff.mean()),
        low=low,
        high=high,
        verdict=verdict(low, high, margin),
        margin=margin,
        accuracy_a=float(a.mean()),
        accuracy_b=float(b.mean()),
        seeds=common,
        n_examples=a.shape[1],
        mcnemar={s: mcnemar_p(a[i], b[i]) for i, s in enumerate(common)},
        confidence=confidence,
    )


def accuracy_interval(
    runs: Sequence[Mapping], split: str = "test", *, confidence: float = 0.95, n_boot: int = 10_000, seed: int = 0
) -> tuple[float, float, float]:
    """``(mean accuracy, low, high)`` over the runs' seeds and examples, by the same two-way bootstrap."""
    _, _, correct = outcomes(runs, split)
    boots = _bootstrap_means(correct.astype(np.int16), n_boot, np.random.default_rng(seed))
    tail = (1 - confidence) / 2
    low, high = (float(q) for q in np.quantile(boots, [tail, 1 - tail]))
    return float(correct.mean()), low, high


def majority_rate(runs: Sequence[Mapping], split: str = "test") -> float:
    """The accuracy of always answering the most common gold label of ``split`` (the first run's)."""
    if not runs:
        raise ValueError("runs must be a non-empty sequence of run records")
    gold = list(runs[0]["predictions"][split]["gold"])
    counts: dict = {}
    for g in gold:
        counts[g] = counts.get(g, 0) + 1
    return max(counts.values()) / len(gold)


def at_majority(runs: Sequence[Mapping], split: str = "test", **kwargs) -> bool:
    """Whether the runs' accuracy is no better than always answering the majority class: the
    lower end of its :func:`accuracy_interval` reaches :func:`majority_rate`. A method flagged so
    has not learned the task; beating it says nothing about the other method."""
    _, low, _ = accuracy_interval(runs, split, **kwargs)
    return low <= majority_rate(runs, split)
