"""The evidence harness (issue #31): paired statistics, the learning-rate protocol, resumable
sweeps, and tables that can be recomputed from the committed run records."""

import json
import math

import numpy as np
import pytest
from helpers import REPO
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import binom

from structmat.analysis.paired import (
    accuracy_interval,
    at_majority,
    majority_rate,
    mcnemar_p,
    outcomes,
    paired_comparison,
    verdict,
)
from structmat.experiments import sweep as sw

RESULTS = REPO / "benchmarks" / "results"


def run(seed, correct, ids=None, gold=None):
    """A record with 0/1 outcomes ``correct`` (gold 1, pred 1 when correct else 0)."""
    ids = ids or [f"e{i}" for i in range(len(correct))]
    gold = gold or [1] * len(correct)
    return {
        "seed": seed,
        "predictions": {
            "test": {"ids": ids, "gold": gold, "pred": [g if c else 1 - g for g, c in zip(gold, correct, strict=True)]}
        },
    }  # noqa: E501


# -- verdict words ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "low,high,word",
    [
        (0.001, 0.02, "better"),
        (-0.05, -0.001, "worse"),
        (-0.004, 0.006, "equivalent"),
        (-0.02, 0.004, "not distinguishable"),
        (-0.01, 0.01, "equivalent"),
        (0.0, 0.0, "equivalent"),
    ],
)
def test_verdict_follows_the_interval_and_margin(low, high, word):
    assert verdict(low, high, margin=0.01) == word


def test_verdict_bad_input_is_named():
    with pytest.raises(ValueError, match="low must be <= high"):
        verdict(0.1, 0.0)
    with pytest.raises(ValueError, match="margin"):
        verdict(0.0, 0.1, margin=float("nan"))


# -- pairing ---------------------------------------------------------------------------------------
def test_outcomes_pair_examples_by_id_whatever_their_order():
    a = run(0, [1, 0, 1], ids=["x", "y", "z"])
    b = run(1, [0, 1, 1], ids=["z", "x", "y"])
    seeds, ids, correct = outcomes([b, a])
    assert seeds == [0, 1] and ids == ["x", "y", "z"]
    np.testing.assert_array_equal(correct, [[1, 0, 1], [1, 1, 0]])  # seed 1: z 0, x 1, y 1


def test_runs_on_other_examples_are_refused():
    with pytest.raises(ValueError, match="other test examples"):
        outcomes([run(0, [1, 0]), run(1, [1, 0], ids=["e0", "e9"])])
    with pytest.raises(ValueError, match="share at least 2 seeds"):
        paired_comparison([run(0, [1]), run(1, [1])], [run(2, [1]), run(3, [0])])


# -- McNemar against the binomial sum written out ----------------------------------------------------
@given(st.lists(st.tuples(st.booleans(), st.booleans()), min_size=1, max_size=60))
@settings(max_examples=60, deadline=None)
def test_mcnemar_is_the_exact_two_sided_binomial_test(pairs):
    a = np.array([p[0] for p in pairs], dtype=np.int8)
    b = np.array([p[1] for p in pairs], dtype=np.int8)
    n10, n01 = int(((a == 1) & (b == 0)).sum()), int(((a == 0) & (b == 1)).sum())
    n = n10 + n01
    if n == 0:
        expected = 1.0
    else:  # sum of the probabilities of outcomes no more likely than the one seen
        pk = binom.pmf(n10, n, 0.5)
        expected = min(1.0, sum(binom.pmf(k, n, 0.5) for k in range(n + 1) if binom.pmf(k, n, 0.5) <= pk * (1 + 1e-7)))
    assert math.isclose(mcnemar_p(a, b), expected, rel_tol=1e-6)


# -- the bootstrap against a plain-loop bootstrap ---------------------------------------------------
def plain_bootstrap(diff, n_boot, seed):
    """Resample seeds, then examples, with replacement (a loop; an independent implementation)."""
    rng = np.random.default_rng(seed)
    s, n = diff.shape
    means = []
    for _ in range(n_boot):
        rows = rng.integers(0, s, s)
        cols = rng.integers(0, n, n)
        means.append(diff[np.ix_(rows, cols)].mean())
    return np.quantile(means, [0.025, 0.975])


def test_bootstrap_interval_matches_a_plain_loop_bootstrap():
    rng = np.random.default_rng(0)
    a = (rng.random((5, 300)) < 0.75).astype(int)
    b = (rng.random((5, 300)) < 0.70).astype(int)
    runs_a = [run(s, list(a[s])) for s in range(5)]
    runs_b = [run(s, list(b[s])) for s in range(5)]
    cmp = paired_comparison(runs_a, runs_b, n_boot=4000, seed=1)
    low, high = plain_bootstrap(a - b, 4000, seed=2)
    assert math.isclose(cmp.difference, (a - b).mean())
    assert abs(cmp.low - low) < 0.01 and abs(cmp.high - high) < 0.01  # two Monte Carlo estimates of one interval
    assert cmp.verdict == verdict(cmp.low, cmp.high, cmp.margin)
    assert sorted(cmp.mcnemar) == list(range(5))


def test_clear_cases():
    all_right = [run(s, [1] * 50) for s in range(3)]
    all_wrong = [run(s, [0] * 50) for s in range(3)]
    cmp = paired_comparison(all_right, all_wrong)
    assert (cmp.difference, cmp.low, cmp.high, cmp.verdict) == (1.0, 1.0, 1.0, "better")
    same = paired_comparison(all_right, all_right)
    assert (same.low, same.high, same.verdict) == (0.0, 0.0, "equivalent")


def test_majority_flag():
    gold = [1] * 60 + [0] * 40
    always_one = [run(s, [g == 1 for g in gold], gold=gold) for s in range(3)]
    assert majority_rate(always_one) == 0.6 and at_majority(always_one)
    good = [run(s, [True] * 95 + [False] * 5, gold=gold) for s in range(3)]
    assert not at_majority(good)
    acc, low, high = accuracy_interval(good)
    assert low <= acc <= high and acc == 0.95


# -- the learning-rate protocol ---------------------------------------------------------------------
def test_choose_lr_widens_at_the_edges_and_breaks_ties_low():
    assert sw.choose_lr({1e-3: 0.5, 3e-3: 0.7, 1e-2: 0.6}, [1e-3, 3e-3, 1e-2]) == (3e-3, None)
    assert sw.choose_lr({1e-3: 0.5, 3e-3: 0.6, 1e-2: 0.7}, [1e-3, 3e-3, 1e-2]) == (1e-2, 3e-2)
    assert sw.choose_lr({1e-3: 0.8, 3e-3: 0.6}, [1e-3, 3e-3]) == (1e-3, 3e-4)
    assert sw.choose_lr({1e-3: 0.7, 3e-3: 0.7, 1e-2: 0.6}, [1e-3, 3e-3, 1e-2]) == (1e-3, 3e-4)  # tie: smaller


def test_sweep_is_resumable_and_widens_its_grid(tmp_path, monkeypatch):
    """A fake run (validation score peaks at 3e-2, beyond the first grid): the grid widens until
    the best rate is inside, seeds run round robin, and a second pass runs nothing again."""
    calls = []

    def fake_run(sweep, setting, lr, seed, data):
        calls.append((setting.key, lr, seed))
        score = 1 - abs(math.log10(lr) - math.log10(3e-2)) / 10
        return {"record_version": 1, "spec": sweep.run_spec(setting, lr, seed), "setting": setting.key, "seed": seed,
                "lr": lr, "trainable_params": 1, "adapter_params": 1, "steps": 1, "final_loss": 0.0, "diverged": None,
                "median_step_seconds": 0.0, "wall_seconds": 0.0, "device": "cpu", "environment": {},
                "scores": {"validation": score, "test": score}, "predictions": {}}  # fmt: skip

    monkeypatch.setattr(sw, "run_one", fake_run)
    sweep = sw.Sweep(
        name="fake", kind="classify", task="t", settings=[sw.Setting("more", 1, ("q",)), sw.Setting("lora", 1, ("q",))],
        comparisons=[], lr_grid=(1e-3, 3e-3), seeds=(0, 1, 2), train_size=1, max_widen=3,
    )  # fmt: skip
    runner = sw.Runner(sweep, tmp_path, log=lambda m: None)
    runner._data = ((), (), ())
    runner.run(sweep.settings)
    grid_runs = [c for c in calls if c[2] == 0]
    assert sorted({lr for _, lr, _ in grid_runs}) == [1e-3, 3e-3, 1e-2, 3e-2, 1e-1]  # widened twice, 3e-2 inside
    assert [c[2] for c in calls if c[2] > 0] == [1, 1, 2, 2]  # round robin over the settings
    assert {lr for _, lr, s in calls if s > 0} == {3e-2}
    before = len(calls)
    sw.Runner(sweep, tmp_path, log=lambda m: None).run(sweep.settings)  # resumed: every record exists
    assert len(calls) == before


# -- the committed tables recompute from the committed records -----------------------------------------
COMMITTED = sorted(RESULTS.glob("sweep_*.json"))


@pytest.mark.skipif(not COMMITTED, reason="no sweep tables committed yet")
@pytest.mark.parametrize("table", COMMITTED, ids=lambda p: p.stem)
def test_a_committed_comparison_recomputes_from_its_records(table):
    summary = json.loads(table.read_text())
    sweep = sw.SWEEPS[summary["sweep"]]
    records = sw.sweep_records(sweep, RESULTS / "runs")
    runs = {s.key: r for s, r in sw.seed_runs(records).items()}
    for row in summary["comparisons"][:2]:
        cmp = paired_comparison(runs[row["a"]], runs[row["b"]], margin=row["margin"])
        assert cmp.seeds == row["seeds"]
        assert math.isclose(cmp.difference, row["difference"], abs_tol=1e-12)
        assert abs(cmp.low - row["low"]) < 1e-9 and abs(cmp.high - row["high"]) < 1e-9  # the same seeded bootstrap
        assert row["verdict"] == verdict(row["low"], row["high"], row["margin"])  # the word follows the interval


def test_gpu_sweep_dry_run(tmp_path):
    """benchmarks/gpu_sweep.sh --dry-run: the reference setting's whole protocol at tiny size on CPU."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, PYTHON=sys.executable, TMPDIR=str(tmp_path))
    proc = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "gpu_sweep.sh"), "--dry-run"], capture_output=True, text=True, env=env,
        timeout=900, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "dry run ok" in proc.stdout
