"""MoRe is a PEFT method (issue #30): PEFT's own API, transformers' adapter API, TRL, LoRA export.

Every test drives the libraries as their users do and compares with an independent expectation
(the model that was saved, the base model, a model built another way).
"""

import importlib.util

import pytest
import torch
from helpers import inputs, logits, tiny_bert, tiny_gpt2, tiny_llama

import structmat.adapters as sa
from structmat.adapters import MoReConfig, apply_more, more_layers

peft = pytest.importorskip("peft")
from peft import AutoPeftModelForCausalLM, AutoPeftModelForSequenceClassification, PeftModel, get_peft_model  # noqa: E402

ARCHS = {  # model, task type, targets
    "bert": (tiny_bert, "SEQ_CLS", ["query", "value"]),
    "llama": (tiny_llama, "CAUSAL_LM", ["q_proj", "v_proj"]),
    "gpt2": (tiny_gpt2, "CAUSAL_LM", ["c_attn"]),  # Conv1D
}


def nonzero(model, scale=0.3, seed=0):
    """Non-zero updates (and heads): a zero update would make every comparison trivial."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale)
    return model


def one_step(model, arch):
    batch = inputs()
    labels = torch.tensor([0, 1, 0]) if arch == "bert" else batch["input_ids"]
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    loss = model(**batch, labels=labels).loss
    loss.backward()
    opt.step()
    return loss


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_get_peft_model_trains_saves_and_peft_loads_it(arch, tmp_path):
    make, task, targets = ARCHS[arch]
    model = get_peft_model(make(), MoReConfig(target_modules=targets, rank=2, task_type=task))
    assert isinstance(model.base_model, sa.MoReModel) and model.peft_config["default"].peft_type == "MORE"
    one_step(model, arch)
    nonzero(model)
    expected = logits(model, inputs())
    model.save_pretrained(tmp_path)
    again = PeftModel.from_pretrained(make(), tmp_path)
    torch.testing.assert_close(logits(again, inputs()), expected, rtol=0, atol=0)
    # apply_more builds the same layers as get_peft_model
    in_place = apply_more(make(), config=MoReConfig(target_modules=targets, rank=2))
    assert set(more_layers(in_place)) == set(more_layers(model))


def test_our_saves_load_in_peft_and_peft_saves_load_in_ours(tmp_path):
    model = nonzero(apply_more(tiny_bert(), ["query", "value"], rank=2))
    expected = logits(model, inputs())
    sa.save_adapter(model, tmp_path / "ours")
    torch.testing.assert_close(logits(PeftModel.from_pretrained(tiny_bert(), tmp_path / "ours"), inputs()), expected)
    peft_model = get_peft_model(tiny_bert(), MoReConfig(target_modules=["query", "value"], rank=2, task_type="SEQ_CLS"))
    nonzero(peft_model, seed=3)
    peft_model.save_pretrained(tmp_path / "peft")
    loaded = sa.load_adapter(tiny_bert(), tmp_path / "peft")
    torch.testing.assert_close(logits(loaded, inputs()), logits(peft_model, inputs()), rtol=0, atol=0)


@pytest.mark.parametrize("auto", ["seq_cls", "causal"])
def test_auto_peft_model_from_a_local_base_folder(auto, tmp_path):
    make, task, cls = (tiny_bert, "SEQ_CLS", AutoPeftModelForSequenceClassification)
    if auto == "causal":
        make, task, cls = (tiny_llama, "CAUSAL_LM", AutoPeftModelForCausalLM)
    make().save_pretrained(tmp_path / "base")
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    base = (AutoModelForSequenceClassification if auto == "seq_cls" else AutoModelForCausalLM).from_pretrained(
        tmp_path / "base"
    )
    model = nonzero(get_peft_model(base, MoReConfig(rank=2, task_type=task)))
    model.save_pretrained(tmp_path / "adapter")
    loaded = cls.from_pretrained(tmp_path / "adapter")
    torch.testing.assert_close(logits(loaded, inputs()), logits(model, inputs()), rtol=0, atol=0)


def test_transformers_load_adapter_and_save_pretrained(tmp_path):
    """transformers' own PEFT integration (``model.load_adapter``, ``save_pretrained`` of a model
    carrying adapters) with the pinned pair transformers 5.23 / peft 0.21.2."""
    model = nonzero(apply_more(tiny_llama(), ["q_proj", "v_proj"], rank=2))
    expected = logits(model, inputs())
    model.save_pretrained(tmp_path / "saved")  # transformers saves only the adapter
    assert (tmp_path / "saved" / "adapter_model.safetensors").is_file()
    assert not (tmp_path / "saved" / "model.safetensors").exists()
    base = tiny_llama()
    base.load_adapter(str(tmp_path / "saved"))
    torch.testing.assert_close(logits(base, inputs()), expected, rtol=0, atol=0)
    assert base.active_adapters() == ["default"]


def test_named_adapters_disable_merge_unload_through_peft(tmp_path):
    model = get_peft_model(tiny_bert(), MoReConfig(target_modules=["query", "value"], rank=2, task_type="SEQ_CLS"))
    nonzero(model, seed=1)
    a = logits(model, inputs())
    model.add_adapter("other", MoReConfig(target_modules=["query"], rank=1, task_type="SEQ_CLS"))
    model.set_adapter("other")
    nonzero(model, seed=2)
    b = logits(model, inputs())
    assert not torch.allclose(a, b)
    model.set_adapter("default")
    torch.testing.assert_close(logits(model, inputs()), a, rtol=0, atol=0)
    with model.disable_adapter():
        torch.testing.assert_close(logits(model, inputs()), logits(tiny_bert(), inputs()), rtol=0, atol=0)
    model.merge_adapter()
    torch.testing.assert_close(logits(model, inputs()), a, rtol=1e-5, atol=1e-6)
    model.unmerge_adapter()
    torch.testing.assert_close(logits(model, inputs()), a, rtol=0, atol=0)
    model.delete_adapter("other")
    assert list(model.peft_config) == ["default"]
    merged = model.merge_and_unload(safe_merge=True)
    assert not more_layers(merged)
    torch.testing.assert_close(logits(merged, inputs()), a, rtol=1e-5, atol=1e-6)


def test_unload_through_peft_gives_the_base_back():
    model = nonzero(get_peft_model(tiny_llama(), MoReConfig(rank=2, task_type="CAUSAL_LM")))
    plain = model.unload()
    torch.testing.assert_close(logits(plain, inputs()), logits(tiny_llama(), inputs()), rtol=0, atol=0)


def test_safe_merge_through_peft_refuses_nonfinite_and_merges_nothing():
    model = get_peft_model(tiny_llama(), MoReConfig(rank=2, task_type="CAUSAL_LM"))
    layers = list(more_layers(model).values())
    with torch.no_grad():
        layers[-1].more_update["default"].blkdiag2.fill_(float("nan"))
    before = [layer.base_layer.weight for layer in layers]
    with pytest.raises(ValueError, match="NaN or inf"):
        model.merge_adapter(safe_merge=True)
    assert [layer.base_layer.weight for layer in layers] == before and not any(layer.merged for layer in layers)


def test_several_active_adapters_add_their_updates():
    """PEFT's meaning of several active adapters: the sum of their updates."""
    model = apply_more(tiny_llama(), ["q_proj"], rank=2)
    sa.add_adapter(model, "b", MoReConfig(target_modules=["q_proj"], rank=1))
    for name, seed in (("default", 1), ("b", 2)):
        sa.set_adapter(model, name)
        nonzero(model, seed=seed)
    layer = next(iter(more_layers(model).values()))
    x = torch.randn(4, 32)
    expected = layer.base_layer(x) + x @ (layer.more_update["default"].to_dense() + layer.more_update["b"].to_dense()).T
    sa.set_adapter(model, ["default", "b"])
    assert sa.active_adapter(model) == ["default", "b"]
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="no adapter named 'c'; its adapters: \\['default', 'b'\\]"):
        sa.set_adapter(model, ["default", "c"])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_adapter_weights_stay_float32_on_a_half_precision_base(dtype, tmp_path):
    for model in (
        apply_more(tiny_llama(dtype=dtype), rank=2),
        get_peft_model(tiny_llama(dtype=dtype), MoReConfig(rank=2)),
    ):
        params = sa.get_adapter_parameters(model)
        assert params and all(p.dtype == torch.float32 for p in params.values())
        out = model(**inputs()).logits
        assert out.dtype == dtype and torch.isfinite(out).all()
    off = get_peft_model(tiny_llama(dtype=dtype), MoReConfig(rank=2), autocast_adapter_dtype=False)
    assert all(p.dtype == dtype for p in sa.get_adapter_parameters(off).values())


@pytest.mark.parametrize("arch", ["bert", "llama", "gpt2"])
@pytest.mark.parametrize("structure", ["monarch", "lowrank"])
def test_to_lora_is_served_by_peft_lora(arch, structure, tmp_path):
    make, task, targets = ARCHS[arch]
    model = get_peft_model(make(), MoReConfig(target_modules=targets, rank=2, structure=structure, task_type=task))
    nonzero(model)
    expected = logits(model, inputs())
    sa.to_lora(model, tmp_path)
    lora = PeftModel.from_pretrained(make(), tmp_path)
    assert lora.peft_config["default"].peft_type == "LORA"
    torch.testing.assert_close(logits(lora, inputs()), expected, rtol=1e-5, atol=1e-5)
    ranks = {n: m.lora_A["default"].weight.shape[0] for n, m in lora.named_modules() if hasattr(m, "lora_A")}
    assert set(ranks.values()) == {8 if structure == "monarch" else 2}  # nblocks * rank for Monarch


def test_registration_guard_names_the_peft_version(monkeypatch):
    from peft import mapping

    from structmat.adapters.peft_registration import PeftRegistrationError, check_registration

    check_registration(sa.MoReConfig, sa.MoReModel)  # holds now
    monkeypatch.setitem(mapping.PEFT_TYPE_TO_TUNER_MAPPING, "MORE", object)
    with pytest.raises(PeftRegistrationError, match=f"peft {peft.__version__}.*PEFT_TYPE_TO_TUNER_MAPPING"):
        check_registration(sa.MoReConfig, sa.MoReModel)


def test_registration_is_idempotent():
    from structmat.adapters.peft_registration import register

    register(sa.MoReConfig, sa.MoReModel)
    register(sa.MoReConfig, sa.MoReModel)
    assert peft.PeftType.MORE.value == "MORE"


@pytest.mark.skipif(importlib.util.find_spec("trl") is None, reason="trl not installed (a test extra)")
def test_trl_sft_trainer_with_a_more_config(tmp_path):
    """TRL's SFTTrainer(peft_config=MoReConfig(...)) writes adapter checkpoints and the final
    adapter reloads into the base model with the trained outputs."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    tiny_llama().save_pretrained(tmp_path / "base")
    tokenizer = _tiny_tokenizer()
    tokenizer.save_pretrained(tmp_path / "base")
    texts = [f"a{i % 5} b{i % 3} c{i % 7}" for i in range(24)]
    data = Dataset.from_dict({"text": texts})
    args = SFTConfig(
        output_dir=str(tmp_path / "out"), max_steps=6, save_steps=2, per_device_train_batch_size=4, learning_rate=1e-2,
        report_to=[], logging_steps=1, use_cpu=True, max_length=16, save_total_limit=None, dataloader_num_workers=0,
    )  # fmt: skip
    from transformers import AutoModelForCausalLM

    trainer = SFTTrainer(
        model=AutoModelForCausalLM.from_pretrained(tmp_path / "base"), args=args, train_dataset=data,
        processing_class=tokenizer,
        peft_config=MoReConfig(target_modules=["q_proj", "v_proj"], rank=2, task_type="CAUSAL_LM"),
    )  # fmt: skip
    trainer.train()
    checkpoints = sorted(p.name for p in (tmp_path / "out").glob("checkpoint-*"))
    assert len(checkpoints) >= 2
    for c in checkpoints:
        files = {p.name for p in (tmp_path / "out" / c).iterdir()}
        assert {"adapter_model.safetensors", "adapter_config.json"} <= files and "model.safetensors" not in files
    trainer.save_model(str(tmp_path / "final"))
    trained = trainer.model
    assert isinstance(trained, PeftModel) and isinstance(trained.base_model, sa.MoReModel)
    again = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tmp_path / "base"), tmp_path / "final")
    want = {n: p for n, p in trained.named_parameters() if ".more_update." in n}
    got = dict(again.named_parameters())
    assert want and all(torch.equal(got[n], p) for n, p in want.items())  # the trained adapter, exactly
    batch = tokenizer(["a1 b2 c3"], return_tensors="pt")
    with torch.no_grad():  # and it changes what the base model computes
        assert not torch.allclose(
            again(**batch).logits, AutoModelForCausalLM.from_pretrained(tmp_path / "base")(**batch).logits
        )


def _tiny_tokenizer():
    """A word-level tokenizer for the tiny Llama's 64-token vocabulary (no download)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
    for word in [f"{c}{i}" for c in "abc" for i in range(8)]:
        vocab[word] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
