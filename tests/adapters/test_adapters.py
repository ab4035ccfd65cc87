"""apply_more on tiny BERT / GPT-2 (Conv1D) / Llama: init, training, merge, save/load, errors."""

import hashlib
import json

import pytest
import torch
from helpers import MODELS, inputs, logits, randomize_adapter, tiny_bert, tiny_gpt2, tiny_llama
from torch import nn

from structmat.adapters import (
    MoReConfig,
    MoReLinear,
    apply_lora,
    apply_more,
    count_parameters,
    disable_adapter,
    get_adapter_parameters,
    load_adapter,
    merge,
    merge_and_unload,
    more_layers,
    print_trainable_parameters,
    read_adapter_config,
    save_adapter,
    unload,
    unmerge,
)
from structmat.adapters.api import adapter_configs
from structmat.adapters.layer import base_shape


def train_steps(model, steps=3, lr=1e-2, seed=0):
    torch.manual_seed(seed)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    for i in range(steps):
        batch = inputs(seed=10 + i)
        out = model(
            **batch, labels=torch.tensor([0, 1, 0]) if model.config.model_type == "bert" else batch["input_ids"]
        )
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    return model


@pytest.mark.parametrize("arch", ["bert", "gpt2", "llama"])
@pytest.mark.parametrize("rank", [1, 2, 4])
def test_apply_more_trainable_params_and_identity_at_init(arch, rank):
    base = MODELS[arch]()
    batch = inputs()
    expected_logits = logits(base, batch)
    model = apply_more(MODELS[arch](), nblocks=4, rank=rank)
    layers = more_layers(model)
    assert layers, "default targets must match"
    adapter_count = sum(rank * (layer.in_features + layer.out_features) for layer in layers.values())
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    adapter_names = set(get_adapter_parameters(model))
    assert adapter_names <= trainable
    saved = trainable - adapter_names
    assert all(n.startswith("classifier.") for n in saved)  # only the head of the BERT classifier
    assert sum(p.numel() for p in get_adapter_parameters(model).values()) == adapter_count
    head = sum(p.numel() for n, p in model.named_parameters() if n in saved)
    assert count_parameters(model)[0] == adapter_count + head
    torch.testing.assert_close(logits(model, batch), expected_logits, rtol=0, atol=0)


def test_default_targets_per_family():
    assert set(more_layers(apply_more(tiny_bert())).keys()) == {
        f"bert.encoder.layer.{i}.attention.self.{t}" for i in range(2) for t in ("query", "value")
    }
    assert all(n.endswith("attn.c_attn") for n in more_layers(apply_more(tiny_gpt2())))
    llama = more_layers(apply_more(tiny_llama()))
    assert {n.rsplit(".", 1)[1] for n in llama} == {"q_proj", "v_proj"}


def test_target_modules_forms():
    regex = apply_more(tiny_llama(), target_modules=r".*\.(k_proj|o_proj)")
    assert {n.rsplit(".", 1)[1] for n in more_layers(regex)} == {"k_proj", "o_proj"}
    every = apply_more(tiny_llama(), target_modules="all-linear")
    assert "lm_head" not in more_layers(every) and len(more_layers(every)) == 2 * 7
    suffix = apply_more(tiny_bert(), target_modules=["attention.output.dense"])
    assert len(more_layers(suffix)) == 2
    excl = apply_more(tiny_bert(), target_modules="all-linear", exclude_modules=["intermediate.dense"])
    names = more_layers(excl)
    assert not any("intermediate" in n for n in names) and "classifier" not in names


def test_conv1d_layer_equals_dense_update():
    model = apply_more(tiny_gpt2(dtype=torch.float64), target_modules=["c_attn", "c_fc"], rank=2)
    randomize_adapter(model)
    layer = next(iter(more_layers(model).values()))
    assert layer.is_conv1d and base_shape(layer.base_layer) == (32, 96)
    x = torch.randn(5, 32, dtype=torch.float64)
    W = layer.base_layer.weight  # (in, out)
    expected = x @ (W + layer.more_update["default"].to_dense().T) + layer.base_layer.bias
    torch.testing.assert_close(layer(x), expected)


@pytest.mark.parametrize("arch", ["bert", "gpt2", "llama"])
def test_merge_and_unload_after_training(arch):
    model = apply_more(MODELS[arch](), target_modules="all-linear", rank=2)
    train_steps(model)
    randomize_adapter(model)  # and make sure the update is far from zero
    batch = inputs()
    adapted = logits(model, batch)
    with disable_adapter(model):
        base_out = logits(model, batch)
    assert not torch.allclose(adapted, base_out)
    plain = merge_and_unload(model)
    assert not any(isinstance(m, MoReLinear) for m in plain.modules())
    torch.testing.assert_close(logits(plain, batch), adapted, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ["bert", "gpt2", "llama"])
def test_unmerge_restores_base_weights_exactly(arch):
    reference = {n: p.clone() for n, p in MODELS[arch](dtype=torch.float64).named_parameters()}
    model = apply_more(MODELS[arch](dtype=torch.float64), target_modules="all-linear", rank=2)
    randomize_adapter(model)
    batch = inputs()
    adapted = logits(model, batch)
    merge(model)
    torch.testing.assert_close(logits(model, batch), adapted, rtol=1e-10, atol=1e-10)
    unmerge(model)
    current = {
        n.replace(".base_layer", "").replace(".original_module", ""): p
        for n, p in model.named_parameters()
        if ".more_update." not in n and ".modules_to_save." not in n
    }
    for name, p in reference.items():
        assert torch.equal(current[name], p), name
    torch.testing.assert_close(logits(model, batch), adapted, rtol=0, atol=0)


def test_safe_merge_refuses_nonfinite():
    model = apply_more(tiny_bert(), rank=1)
    layer = next(iter(more_layers(model).values()))
    with torch.no_grad():
        layer.more_update["default"].blkdiag2.fill_(float("inf"))
        layer.more_update["default"].blkdiag1.fill_(1.0)
    before = layer.base_layer.weight.clone()
    with pytest.raises(ValueError, match="safe_merge"):
        merge(model, safe_merge=True)
    assert torch.equal(layer.base_layer.weight, before) and not layer.merged


@pytest.mark.parametrize("arch", ["bert", "gpt2", "llama"])
def test_save_load_reproduces_outputs(arch, tmp_path):
    model = apply_more(MODELS[arch](), rank=2)
    train_steps(model)
    randomize_adapter(model)
    batch = inputs()
    expected = logits(model, batch)
    save_adapter(model, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".structmat-saves",  # the files of each save, named by the manifest
        "adapter_config.json", "adapter_model.safetensors",  # PEFT's layout
        "structmat_adapters.json",  # the manifest: the save's adapters and their folder
    ]  # fmt: skip
    fresh = load_adapter(MODELS[arch](), tmp_path)
    torch.testing.assert_close(logits(fresh, batch), expected, rtol=0, atol=0)
    cfg = json.loads((tmp_path / "adapter_config.json").read_text())
    assert cfg["rank"] == 2 and cfg["peft_type"] == "MORE" and cfg["base_model_class"] == type(model).__name__


def test_load_into_already_adapted_model(tmp_path):
    model = apply_more(tiny_bert(), rank=2)
    randomize_adapter(model)
    save_adapter(model, tmp_path)
    other = apply_more(tiny_bert(), rank=2)
    load_adapter(other, tmp_path)
    batch = inputs()
    torch.testing.assert_close(logits(other, batch), logits(model, batch), rtol=0, atol=0)


def test_load_errors_leave_model_untouched(tmp_path):
    model = apply_more(tiny_bert(), rank=2)
    save_adapter(model, tmp_path)
    gpt = tiny_gpt2()
    with pytest.raises(ValueError, match="no layer 'bert.encoder.*saved for BertForSequenceClassification"):
        load_adapter(gpt, tmp_path)
    assert not more_layers(gpt)
    # same architecture, other shapes
    from transformers import BertConfig, BertForSequenceClassification

    wide = BertForSequenceClassification(
        BertConfig(vocab_size=64, hidden_size=48, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
    )
    with pytest.raises(ValueError, match="wrong shape"):
        load_adapter(wide, tmp_path)
    assert not more_layers(wide)
    shallow = BertForSequenceClassification(
        BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64)
    )
    with pytest.raises(ValueError, match="no layer 'bert.encoder.layer.1"):
        load_adapter(shallow, tmp_path)
    assert not more_layers(shallow)


def test_weights_file_carries_its_config(tmp_path):
    """A config file from another save does not change what loads: the weights file is the unit."""
    a, b = tmp_path / "a", tmp_path / "b"
    model = apply_more(tiny_bert(), rank=2)
    randomize_adapter(model)
    save_adapter(model, a)
    save_adapter(apply_more(tiny_bert(), rank=1), b)
    (a / "adapter_config.json").write_text((b / "adapter_config.json").read_text())
    assert read_adapter_config(a).rank == 2
    loaded = load_adapter(tiny_bert(), a)
    torch.testing.assert_close(logits(loaded, inputs()), logits(model, inputs()), rtol=0, atol=0)


def test_legacy_folder_config_mismatch_detected(tmp_path):
    """Folders of the first format (config only in the JSON file, its hash in the weights) still
    load, and a JSON file from another save is still detected there."""
    from safetensors.torch import save_file

    from structmat.adapters.io import adapter_state_dict

    def legacy_save(model, folder):
        folder.mkdir()
        text = adapter_configs(model)["default"].to_json()
        meta = {"format": "pt", "structmat_config_sha256": hashlib.sha256(text.encode()).hexdigest()}
        save_file(adapter_state_dict(model), str(folder / "adapter_model.safetensors"), metadata=meta)
        (folder / "adapter_config.json").write_text(text)

    model = apply_more(tiny_bert(), rank=2)
    randomize_adapter(model)
    legacy_save(model, tmp_path / "a")
    torch.testing.assert_close(logits(load_adapter(tiny_bert(), tmp_path / "a"), inputs()), logits(model, inputs()))
    legacy_save(apply_more(tiny_bert(), rank=1), tmp_path / "b")
    (tmp_path / "a" / "adapter_config.json").write_text((tmp_path / "b" / "adapter_config.json").read_text())
    with pytest.raises(ValueError, match="different saves"):
        load_adapter(tiny_bert(), tmp_path / "a")


def test_failed_save_keeps_old_files(tmp_path, monkeypatch):
    def files():
        return {str(p.relative_to(tmp_path)): p.read_bytes() for p in sorted(tmp_path.rglob("*")) if p.is_file()}

    model = apply_more(tiny_bert(), rank=2)
    save_adapter(model, tmp_path)
    old = files()
    randomize_adapter(model)
    import structmat.adapters.storage as storage

    def broken(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(storage.os, "replace", broken)
    with pytest.raises(OSError, match="disk full"):
        save_adapter(model, tmp_path)
    assert files() == old  # no temporary file or half-written save left either


def test_unknown_config_keys_warn():
    with pytest.warns(UserWarning, match="unknown"):
        cfg = MoReConfig.from_dict({"rank": 2, "from_the_future": 1})
    assert cfg.rank == 2


def test_print_trainable_parameters(capsys):
    model = apply_more(tiny_bert(), rank=1)
    print_trainable_parameters(model)
    out = capsys.readouterr().out
    trainable, total = count_parameters(model)
    assert out.startswith(f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%:")


def test_unload_gives_base_model_back():
    base_logits = logits(tiny_bert(), inputs())
    model = apply_more(tiny_bert(), rank=2, modules_to_save=None)
    randomize_adapter(model)
    model = unload(model)
    assert not more_layers(model)
    torch.testing.assert_close(logits(model, inputs()), base_logits, rtol=0, atol=0)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (
            {"target_modules": ["not_a_layer"]},
            r"entries \['not_a_layer'\] match no linear layer.*attention\.self\.query",
        ),
        ({"target_modules": r"nothing\..*"}, "matched no linear layer; the model's linear layers are"),
        ({"rank": 0}, "rank must be a positive integer"),
        ({"rank": 40}, "rank=40 is larger"),
        ({"nblocks": 64}, "nblocks=64 does not fit"),
        ({"dropout": 1.5}, "dropout must be"),
        ({"modules_to_save": ["no_head"]}, "modules_to_save entry 'no_head'"),
    ],
)
def test_apply_more_bad_input(kwargs, match):
    model = tiny_bert()
    before = {n: p.requires_grad for n, p in model.named_parameters()}
    with pytest.raises(ValueError, match=match):
        apply_more(model, **kwargs)
    assert not more_layers(model)
    assert {n: p.requires_grad for n, p in model.named_parameters()} == before  # nothing done half


def test_model_without_linear_layers():
    with pytest.raises(ValueError, match="has no nn.Linear or Conv1D layers"):
        apply_more(nn.Sequential(nn.Conv2d(1, 1, 3), nn.ReLU()), target_modules="all-linear")


def test_no_default_for_unknown_architecture():
    with pytest.raises(ValueError, match="no default for model_type=None.*0, 1"):
        apply_more(nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8)))


def test_apply_twice_refused():
    model = apply_more(tiny_bert())
    with pytest.raises(ValueError, match="already has a MoRe adapter"):
        apply_more(model)


def test_lora_baseline_same_targets_and_counts():
    pytest.importorskip("peft")
    lora = apply_lora(tiny_bert(), rank=4)
    more = apply_more(tiny_bert(), rank=4)
    lora_targets = {n.removeprefix("base_model.model.") for n, m in lora.named_modules() if hasattr(m, "lora_A")}
    assert lora_targets == set(more_layers(more))
    lora_trainable = sum(p.numel() for n, p in lora.named_parameters() if p.requires_grad and "lora_" in n)
    assert lora_trainable == sum(p.numel() for p in get_adapter_parameters(more).values())
    gpt = apply_lora(tiny_gpt2(), rank=2)  # Conv1D targets need fan_in_fan_out
    torch.testing.assert_close(logits(gpt, inputs()), logits(tiny_gpt2(), inputs()))


def test_folder_written_by_the_first_format_still_loads():
    """tests/data/adapter_format1 was written by structmat at 98a60bb (config only in the JSON
    file, its hash in the weights' metadata), with the logits it gave."""
    from helpers import TESTS
    from safetensors.torch import load_file

    folder = TESTS / "data" / "adapter_format1"
    expected = load_file(str(TESTS / "data" / "adapter_format1_logits.safetensors"))["logits"]
    stored = load_file(str(folder / "adapter_model.safetensors"))
    model = load_adapter(tiny_bert(), folder)
    # the format's promise: every stored tensor is in the model bit for bit (found by value, so
    # that the check does not depend on how the adapter layers name their parameters)
    params = list(model.state_dict().values())
    missing = [k for k, t in stored.items() if not any(p.shape == t.shape and torch.equal(p, t) for p in params)]
    assert missing == [], f"stored tensors not loaded exactly: {missing}"
    # logits computed now vs logits stored from another machine: float32 rounding may differ
    # (another CPU's kernels moved them by 6e-8), so a dtype tolerance, not bit equality
    torch.testing.assert_close(logits(model, inputs()), expected)  # float32: rtol 1.3e-6, atol 1e-5
    assert read_adapter_config(folder).rank == 2
