"""Adversarial probe of the MoRe adapter layer (issue 15): what a demanding PyTorch / PEFT /
transformers user does with adapters.

The tests in the first part were defects found by the probe, committed as ``xfail(strict=True)``
(so each failed before its fix) and stated against an independent expectation (the base model's
outputs, the outputs of the model that was saved, PEFT's behaviour); where the fix is a refusal,
the test checks the refusal (a ``ValueError`` naming the argument, the model unchanged). The other
tests pin down behaviours that held under the probe and were not covered yet.
"""

import copy
import io
import pathlib
import random
import warnings

import pytest
import torch
from helpers import inputs, logits, tiny_bert, tiny_llama
from torch import nn

from structmat.adapters import (
    MoReConfig,
    MoReLinear,
    active_adapter,
    add_adapter,
    apply_more,
    count_parameters,
    delete_adapter,
    disable_adapter,
    get_adapter_parameters,
    list_adapters,
    load_adapter,
    load_adapters,
    merge,
    merge_and_unload,
    more_layers,
    save_adapter,
    set_adapter,
    unmerge,
)
from structmat.adapters.api import adapter_configs, base_of
from structmat.adapters.io import CONFIG_NAME, MANIFEST_NAME, WEIGHTS_NAME

LABELS = torch.tensor([0, 1, 0])


def randomize(model, adapter_name=None, seed=0, scale=0.5):
    """Non-zero values for an adapter's Monarch factors and its copies of the modules to save."""
    name = adapter_name if adapter_name is not None else active_adapter(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if f".more_update.{name}." in f".{n}" or f".modules_to_save.{name}." in f".{n}":
                p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale)
    return model


def close(a, b):
    return torch.allclose(a, b, rtol=1e-5, atol=1e-5)


# =============================================================================================
# Defects found by the probe (xfail strict before their fixes): each states what a user would expect
# =============================================================================================

# -- mixed precision ---------------------------------------------------------------------------


@pytest.mark.parametrize("rank", [2, 16])  # middle 8: expanded path; middle 64: bmm path
def test_backward_under_autocast(rank):
    torch.manual_seed(0)
    layer = apply_more(nn.Sequential(nn.Linear(64, 64)), ["0"], nblocks=4, rank=rank, modules_to_save=None)[0]
    with torch.no_grad():
        layer.more_update["default"].blkdiag2.normal_()
    x = torch.randn(3, 64)
    layer(x).sum().backward()  # float32 reference
    factors = (layer.more_update["default"].blkdiag1, layer.more_update["default"].blkdiag2)
    expected = [p.grad.clone() for p in factors]
    layer.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    y.float().sum().backward()  # RuntimeError: expected m1 and m2 to have the same dtype
    for p, want in zip(factors, expected, strict=True):
        assert p.grad.dtype == torch.float32
        torch.testing.assert_close(p.grad, want, rtol=0.05, atol=0.05 * float(want.abs().max()))


@pytest.mark.parametrize("rank", [2, 16])  # middle 8: the fused expanded path; middle 64: bmm
@pytest.mark.parametrize("fused", [True, False])
def test_torch_func_grad_through_an_adapted_layer(rank, fused):
    torch.manual_seed(0)
    net = apply_more(nn.Sequential(nn.Linear(64, 64)), ["0"], nblocks=4, rank=rank, modules_to_save=None)
    net[0].fused = fused
    with torch.no_grad():
        net[0].more_update["default"].blkdiag2.normal_()
    params = {k: v.detach() for k, v in net.named_parameters()}
    x = torch.randn(5, 64)

    def loss(p, xs):
        return torch.func.functional_call(net, p, (xs,)).pow(2).sum()

    got = torch.func.grad(loss)(params, x)
    net(x).pow(2).sum().backward()
    for name, p in net.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(got[name], p.grad)
    # per-sample gradients (vmap over grad) against a plain loop over the samples
    per_sample = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0))(params, x.unsqueeze(1))
    for i in range(len(x)):
        net.zero_grad()
        net(x[i : i + 1]).pow(2).sum().backward()
        for name, p in net.named_parameters():
            if p.requires_grad:
                torch.testing.assert_close(per_sample[name][i], p.grad)


# -- operations inside `with disable_adapter(model)` -------------------------------------------


def test_merge_inside_disable_adapter_keeps_the_base_model():
    batch = inputs()
    base = logits(tiny_bert(), batch)
    model = randomize(apply_more(tiny_bert(), rank=2))
    adapted = logits(model, batch)
    with disable_adapter(model):
        with pytest.raises(ValueError, match="disable_adapter"):  # was: merged W+dW with the base head
            merge(model)
        assert close(logits(model, batch), base)  # PEFT computes the base model here
    assert close(logits(model, batch), adapted) and not any(layer.merged for layer in more_layers(model).values())


def test_merge_and_unload_inside_disable_adapter_is_one_or_the_other():
    batch = inputs()
    base = logits(tiny_bert(), batch)
    model = randomize(apply_more(tiny_bert(), rank=2))
    adapted = logits(model, batch)
    with disable_adapter(model):
        with pytest.raises(ValueError, match="disable_adapter"):  # was: adapted layers with the base head
            merge_and_unload(model)
        assert close(logits(model, batch), base)
    assert close(logits(model, batch), adapted) and list_adapters(model) == ["default"]
    assert close(logits(merge_and_unload(model), batch), adapted)  # after the block: allowed


def test_add_adapter_inside_disable_adapter_stays_disabled():
    batch = inputs()
    base = logits(tiny_bert(), batch)
    model = randomize(apply_more(tiny_bert(), ["query"], rank=2, modules_to_save=None))
    with disable_adapter(model):
        add_adapter(model, "b", MoReConfig(target_modules=["intermediate.dense"], rank=2, modules_to_save=None))
        set_adapter(model, "b")
        randomize(model, "b")
        assert close(logits(model, batch), base)
    b_alone = single_adapter_reference(model, "b", adapter_configs(model)["b"])
    assert close(logits(model, batch), b_alone) and not close(b_alone, base)  # enabled again after the block


# -- delete / names ------------------------------------------------------------------------------


def test_delete_last_adapter_removes_its_head_too():
    batch = inputs()
    base = logits(tiny_bert(), batch)
    model = randomize(apply_more(tiny_bert(), ["query"], rank=2))  # modules_to_save="auto": the classifier
    delete_adapter(model, "default")
    assert close(logits(model, batch), base)
    assert not more_layers(model) and not list_adapters(model)


@pytest.mark.parametrize("via", ["apply_more", "get_peft_model"])
def test_deleting_the_active_adapter_hands_the_head_to_the_next_one(via):
    """Found porting the sequence test below to PEFT's tuner: PEFT switches a module to save only
    where the deleted adapter had a copy, so a head saved by the next active adapter alone kept
    computing the original head."""
    import peft

    no_head = MoReConfig(target_modules=["intermediate.dense"], rank=2)
    with_head = MoReConfig(target_modules=["query"], rank=2, modules_to_save=["classifier"])
    if via == "apply_more":
        model = apply_more(tiny_bert(), config=no_head, adapter_name="b")
    else:
        model = peft.get_peft_model(tiny_bert(), no_head, adapter_name="b")
    add_adapter(model, "a", with_head)
    randomize(model, "b", seed=1), randomize(model, "a", seed=2)
    expected = single_adapter_reference(base_of(model), "a", with_head)
    with pytest.warns(UserWarning, match="Setting active adapter to a"):
        delete_adapter(model, "b")  # the active one
    assert active_adapter(model) == "a" and close(logits(model, inputs()), expected)


@pytest.mark.parametrize("name", ["update", "keys", "train", "to", "training"])
def test_adapter_name_that_is_a_moduledict_attribute(name):
    """Was: accepted by check_adapter_name, then nn.ModuleDict raised a KeyError (not naming
    adapter_name) after apply_more had frozen every parameter."""
    model = tiny_bert()
    before = {n: p.requires_grad for n, p in model.named_parameters()}
    with pytest.raises(ValueError, match="adapter_name"):
        apply_more(model, rank=2, adapter_name=name)
    assert {n: p.requires_grad for n, p in model.named_parameters()} == before


@pytest.mark.parametrize("name", ["a/b", "/tmp/x", "a\\b", "a.b"])
def test_adapter_name_with_a_path_separator_is_refused(name, tmp_path):
    """Was: 'a/b' accepted, and save_adapter wrote it into nested folders (an absolute name even
    outside the folder) that load_adapters did not find. A name becomes a folder name: refused."""
    model = tiny_bert()
    with pytest.raises(ValueError, match="adapter_name"):
        apply_more(model, rank=2, adapter_name=name)
    assert not more_layers(model) and all(p.requires_grad for p in model.parameters())
    model = apply_more(model, rank=2)
    with pytest.raises(ValueError, match="adapter_name"):
        add_adapter(model, name, MoReConfig(target_modules=["value"], rank=2))
    assert list_adapters(model) == ["default"]


# -- what a folder holds -------------------------------------------------------------------------


def test_load_adapters_gives_the_last_save(tmp_path):
    batch = inputs()
    old = randomize(apply_more(tiny_bert(), rank=2), seed=1)
    save_adapter(old, tmp_path)
    new = randomize(apply_more(tiny_bert(), rank=2, adapter_name="sst"), seed=2)
    save_adapter(new, tmp_path)  # the same folder, a model whose adapter has another name
    loaded = load_adapters(tiny_bert(), tmp_path)  # was: the stale 'default' too, and active
    assert list_adapters(loaded) == ["sst"]
    assert close(logits(loaded, batch), logits(new, batch))
    add_adapter(new, "extra", MoReConfig(target_modules=["value"], rank=2))
    save_adapter(new, tmp_path, adapter_name="extra")  # one adapter added to the folder's save
    assert list_adapters(load_adapters(tiny_bert(), tmp_path)) == ["sst", "extra"]


def test_load_adapters_ignores_adapters_saved_in_their_own_folders(tmp_path):
    final = randomize(apply_more(tiny_bert(), rank=2), seed=1)
    save_adapter(final, tmp_path)  # trainer.save_model(output_dir)
    save_adapter(randomize(apply_more(tiny_bert(), rank=2), seed=2), tmp_path / "checkpoint-3")  # a checkpoint
    loaded = load_adapters(tiny_bert(), tmp_path)  # was: 'checkpoint-3' loaded as an adapter too
    assert list_adapters(loaded) == ["default"]
    assert close(logits(loaded, inputs()), logits(final, inputs()))


def test_load_adapters_fails_before_touching_the_model(tmp_path):
    """Was: a subfolder whose name is no adapter name failed after the adapters before it were
    loaded. A folder saved by save_adapter lists its adapters (structmat_adapters.json): the
    subfolder is not one of them. A folder without that list (older saves, assembled by hand):
    the names are checked before the model changes."""
    source = apply_more(tiny_bert(), rank=2)
    save_adapter(source, tmp_path)
    save_adapter(source, tmp_path / "run.1")
    assert list_adapters(load_adapters(tiny_bert(), tmp_path)) == ["default"]
    (tmp_path / MANIFEST_NAME).unlink()
    model = tiny_bert()
    with pytest.raises(ValueError, match="run.1"):
        load_adapters(model, tmp_path)
    assert not more_layers(model) and all(p.requires_grad for p in model.parameters())


def test_load_adapters_uses_what_it_checked(tmp_path, monkeypatch):
    model = apply_more(tiny_bert(), ["query"], rank=2, adapter_name="a", modules_to_save=None)
    add_adapter(model, "b", MoReConfig(target_modules=["value"], rank=2, modules_to_save=None))
    save_adapter(model, tmp_path)
    from helpers import tiny_gpt2

    other = apply_more(tiny_gpt2(), rank=2, adapter_name="b")  # another process saves into b meanwhile
    real = pathlib.Path.read_bytes
    target = tmp_path / "b" / WEIGHTS_NAME
    swapped = []

    def read_bytes(self):
        data = real(self)
        if self == target and not swapped:
            swapped.append(1)
            save_adapter(other, tmp_path, adapter_name="b")
        return data

    monkeypatch.setattr(pathlib.Path, "read_bytes", read_bytes)
    fresh = tiny_bert()
    try:
        load_adapters(fresh, tmp_path)
    except ValueError:
        assert not more_layers(fresh)  # a failed load changes nothing
    else:
        assert list_adapters(fresh) == ["a", "b"]  # what was checked: both BERT adapters


def test_multi_adapter_save_is_one_unit(tmp_path, monkeypatch):
    batch = inputs()

    def outputs(model):
        res = {}
        for name in ("a", "b"):
            set_adapter(model, name)
            res[name] = logits(model, batch)
        return res

    model = apply_more(tiny_bert(), ["intermediate.dense"], rank=2, adapter_name="a", modules_to_save=None)
    add_adapter(model, "b", MoReConfig(target_modules=["output.dense"], rank=2, modules_to_save=None))
    randomize(model, "a", seed=1), randomize(model, "b", seed=2)
    save_adapter(model, tmp_path)
    old = outputs(model)
    randomize(model, "a", seed=3), randomize(model, "b", seed=4)
    new = outputs(model)
    import structmat.adapters.folder as adapter_folder

    real = adapter_folder.write_atomically

    def disk_full_in_b(path, data):
        if pathlib.Path(path).parent.name == "b":
            raise OSError("disk full")
        real(path, data)

    monkeypatch.setattr(adapter_folder, "write_atomically", disk_full_in_b)
    with pytest.raises(OSError):
        save_adapter(model, tmp_path)
    monkeypatch.undo()
    # was: the mix loaded without an error; then: refused ("different saves"). Now a save of several
    # adapters is one unit: the failed one left the folder with the previous complete set
    got = outputs(load_adapters(tiny_bert(), tmp_path))
    assert all(close(got[n], old[n]) for n in got) and not any(close(got[n], new[n]) for n in got)
    save_adapter(model, tmp_path)  # the next save replaces the whole set
    got = outputs(load_adapters(tiny_bert(), tmp_path))
    assert all(close(got[n], new[n]) for n in got) and not any(close(got[n], old[n]) for n in got)


# -- loading re-resolves names ----------------------------------------------------------------


def test_load_adapts_exactly_the_saved_layers(tmp_path):
    def net():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(8, 8), nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8)))

    source = apply_more(net(), r"0", nblocks=2, rank=2, modules_to_save=None)  # regex: the layer '0' only
    assert list(more_layers(source)) == ["0"]
    save_adapter(source, tmp_path / "a")
    loaded = load_adapter(net(), tmp_path / "a")
    assert list(more_layers(loaded)) == ["0"]


# -- modules to save --------------------------------------------------------------------------


def test_modules_to_save_buffers_are_saved(tmp_path):
    def net():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8), nn.Linear(8, 8))

    model = apply_more(net(), ["0"], nblocks=2, rank=2, modules_to_save=["1"]).train()
    for _ in range(3):
        model(torch.randn(16, 8) * 3 + 2)  # updates the copy's running mean and variance
    x = torch.randn(4, 8)
    expected = model.eval()(x)
    save_adapter(model, tmp_path)
    loaded = load_adapter(net(), tmp_path).eval()
    assert close(loaded(x), expected)


def test_auto_modules_to_save_covers_the_qa_head(tmp_path):
    from transformers import BertConfig, BertForQuestionAnswering, BertModel

    from structmat.adapters import from_pretrained

    cfg = BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64)
    torch.manual_seed(0)
    BertModel(cfg).save_pretrained(tmp_path / "base")  # a pretrained encoder: no QA head
    model = apply_more(BertForQuestionAnswering.from_pretrained(tmp_path / "base"), rank=2)
    randomize(model)
    save_adapter(model, tmp_path / "adapter")
    batch = inputs()
    with torch.no_grad():
        expected = model.eval()(**batch).start_logits
        got = from_pretrained(tmp_path / "adapter")(**batch).start_logits
    assert close(got, expected)


def test_modules_to_save_around_another_adapters_layers(tmp_path):
    """Was: the pooler was deep-copied with adapter a's layer inside, and neither adapter saved
    loaded again. Now refused up front, the model unchanged."""
    model = apply_more(tiny_bert(), "all-linear", rank=2, adapter_name="a")  # adapts bert.pooler.dense too
    before = {n: p.detach().clone() for n, p in model.state_dict().items()}
    with pytest.raises(ValueError, match="modules_to_save entry 'bert.pooler' contains adapter layers"):
        add_adapter(model, "b", MoReConfig(target_modules=["query"], rank=2, modules_to_save=["pooler"]))
    assert list_adapters(model) == ["a"] and model.state_dict().keys() == before.keys()
    save_adapter(model, tmp_path)
    load_adapter(tiny_bert(), tmp_path / "a", adapter_name="a")


# -- configs ------------------------------------------------------------------------------------


def test_sets_in_the_config_save(tmp_path):
    model = apply_more(tiny_bert(), "all-linear", rank=2, exclude_modules={"key"}, modules_to_save={"classifier"})
    save_adapter(model, tmp_path)
    load_adapter(tiny_bert(), tmp_path)


def test_load_into_same_name_applies_the_saved_dropout(tmp_path):
    source = randomize(apply_more(tiny_bert(), rank=2, dropout=0.3), scale=1.0)
    save_adapter(source, tmp_path)
    model = load_adapter(apply_more(tiny_bert(), rank=2, dropout=0.0), tmp_path).train()
    layer = next(iter(more_layers(model).values()))
    x = torch.randn(64, layer.in_features)
    torch.manual_seed(0)
    first = layer(x)
    assert not torch.equal(first, layer(x))  # dropout makes two calls differ in training


@pytest.mark.parametrize("arg", ["target_modules", "modules_to_save", "exclude_modules"])
def test_bad_spec_type_names_the_argument(arg):
    kwargs = {"target_modules": ["query"], arg: 5}
    with pytest.raises((TypeError, ValueError), match=arg):
        apply_more(tiny_bert(), **kwargs)


# -- what is adapted ------------------------------------------------------------------------------


def test_all_linear_on_torch_transformer_layer():
    """Was: 'all-linear' wrapped nn.MultiheadAttention.out_proj, which MHA never calls (it reads
    .weight): every forward raised AttributeError. The layers torch's modules read instead of
    calling (MHA's out_proj; TransformerEncoderLayer's linear1/2, read by its eval fast path) are
    refused by name and left out of 'all-linear' with a warning."""
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True).eval()
    x = torch.randn(2, 5, 16)
    expected = layer(x)
    with pytest.warns(UserWarning, match="leaves out"), pytest.raises(ValueError, match="matched no linear layer"):
        apply_more(layer, "all-linear", nblocks=2, rank=2)
    for target in (["out_proj"], ["linear1"]):
        with pytest.raises(ValueError, match=f"{target[0]}.*cannot be adapted|cannot be adapted.*{target[0]}"):
            apply_more(layer, target, nblocks=2, rank=2)
    assert not more_layers(layer) and torch.equal(layer(x), expected)

    decoder = nn.TransformerDecoderLayer(16, 2, 32, dropout=0.0, batch_first=True).eval()  # no fast path
    with pytest.warns(UserWarning, match="leaves out"):
        apply_more(decoder, "all-linear", nblocks=2, rank=2, modules_to_save=None)
    assert sorted(more_layers(decoder)) == ["linear1", "linear2"]
    with torch.no_grad():
        base = decoder(x, x)
        randomize(decoder)
        assert not close(decoder(x, x), base)  # the adapter is in effect, in eval without grad too


def test_no_tied_weight_warning_on_the_meta_device():
    with torch.device("meta"):
        model = tiny_llama()  # untied
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        apply_more(model, "all-linear", rank=2)


def test_merge_keeps_the_parameter_count():
    model = randomize(apply_more(tiny_bert(), rank=2))
    before = count_parameters(model)
    merge(model)
    assert count_parameters(model) == before


def test_merge_of_a_weight_normed_layer():
    from torch.nn.utils.parametrizations import weight_norm

    torch.manual_seed(0)
    model = nn.Sequential(weight_norm(nn.Linear(16, 16)))
    try:
        apply_more(model, ["0"], nblocks=4, rank=2, modules_to_save=None)
    except ValueError:
        return  # refused up front: fine
    with torch.no_grad():
        model[0].more_update["default"].blkdiag2.normal_()
    original = {n: p.detach().clone() for n, p in model.named_parameters()}
    x = torch.randn(3, 16)
    adapted = model(x)
    merge(model)
    assert close(model(x), adapted)
    unmerge(model)
    assert all(torch.equal(p, original[n]) for n, p in model.named_parameters())
    assert torch.equal(model(x), adapted)
    plain = merge_and_unload(model)  # the parametrized weight becomes a plain W + dW
    assert type(plain[0]) is nn.Linear and close(plain(x), adapted)


# -- transformers / Trainer ----------------------------------------------------------------------


def test_save_pretrained_of_an_adapted_model_does_not_lose_it(tmp_path):
    """Was: saved under the wrapper names, and from_pretrained re-initialised the adapted layers and
    the head with a log line only; then refused. Now MoRe is a PEFT method and ``apply_more`` marks
    the model as carrying a PEFT adapter: transformers' own ``save_pretrained`` writes the adapter
    and the trained head only (PEFT's folder), which PEFT, structmat and transformers load back.
    The merged plain model saves and loads as what it computes."""
    import peft
    from safetensors import safe_open
    from transformers import BertForSequenceClassification

    model = randomize(apply_more(tiny_bert(), rank=2))
    batch = inputs()
    adapted = logits(model, batch)
    model.save_pretrained(tmp_path / "adapter")
    assert sorted(p.name for p in (tmp_path / "adapter").iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]
    with safe_open(str(tmp_path / "adapter" / WEIGHTS_NAME), "pt") as f:
        keys = set(f.keys())
    trained = {n for n, p in model.named_parameters() if p.requires_grad}  # the factors and the head's copy
    peft_keys = {
        "base_model.model." + n.replace(".modules_to_save.default.", ".").replace(".default.", ".") for n in trained
    }
    assert keys == peft_keys
    assert any(".more_update." in k for k in keys) and "base_model.model.classifier.weight" in keys
    restored = [
        peft.PeftModel.from_pretrained(tiny_bert(), tmp_path / "adapter"),
        load_adapter(tiny_bert(), tmp_path / "adapter"),
    ]
    plain = tiny_bert()
    plain.load_adapter(str(tmp_path / "adapter"))  # transformers' PEFT integration
    for again in [*restored, plain]:
        torch.testing.assert_close(logits(again, batch), adapted, rtol=0, atol=0)
    assert not close(logits(tiny_bert(), batch), adapted)  # so that the checks above can fail
    merge_and_unload(model).save_pretrained(tmp_path / "merged")
    again = BertForSequenceClassification.from_pretrained(tmp_path / "merged").eval()
    assert close(logits(again, batch), adapted)


def test_trainer_on_a_model_adapted_in_place_writes_adapter_checkpoints(tmp_path):
    """Was: ``MoReTrainer`` (the only Trainer that saved MoRe checkpoints) refused a model without
    adapter. There is no MoReTrainer now: the plain transformers ``Trainer`` sees the PEFT adapter
    of a model adapted in place and writes adapter-only checkpoints that load back."""
    from helpers import adapter_trainer

    model = apply_more(tiny_bert(), rank=2)
    adapter_trainer(model, tmp_path, max_steps=2, save_steps=2).train()
    checkpoint = tmp_path / "checkpoint-2"
    names = {p.name for p in checkpoint.iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json"} <= names
    assert not names & {"model.safetensors", "pytorch_model.bin", "config.json"}
    trained = logits(model.eval(), inputs())
    assert not close(trained, logits(tiny_bert(), inputs()))  # training changed it
    torch.testing.assert_close(logits(load_adapter(tiny_bert(), checkpoint), inputs()), trained, rtol=0, atol=0)


# =============================================================================================
# Behaviours that held under the probe (not covered elsewhere)
# =============================================================================================

CONFIGS = [  # with and without the classifier trained as a copy (a MoReConfig names it; apply_more's "auto")
    MoReConfig(target_modules=["query", "value"], rank=2, modules_to_save=["classifier"]),
    MoReConfig(target_modules=["intermediate.dense"], rank=1, modules_to_save=None),
    MoReConfig(target_modules="all-linear", rank=1, modules_to_save=["classifier"]),
]


def single_adapter_reference(model, name, config):
    """The outputs of a fresh model carrying ``name``'s values as its only adapter (independent of the
    named-adapter bookkeeping)."""
    ref = apply_more(tiny_bert(), config=copy.deepcopy(config), adapter_name="x")
    with torch.no_grad():
        for n, p in model.named_parameters():
            for kind in (".more_update.", ".modules_to_save."):
                if f"{kind}{name}." in n:
                    ref.get_parameter(n.replace(f"{kind}{name}.", f"{kind}x.")).copy_(p)
    return logits(ref, inputs())


def applicable_operations(names, merged, disabled):
    """The operations the sequence test may take in this state (the others are refused by design)."""
    ops = []
    if not merged and not disabled and len(names) < 3:
        ops.append("add")
    if names and not merged:
        ops += ["set", "save"] + (["delete"] if len(names) > 1 else []) + ([] if disabled else ["train"])
        ops.append("disable")
    if names and not disabled and not merged:
        ops.append("merge")
    if merged:
        ops.append("unmerge")
    if disabled:
        ops.append("enable")
    return ops


@pytest.mark.parametrize("seed", [1, 8, 10, 11])  # each adds, deletes, trains, merges, saves, disables
def test_random_operation_sequences_match_a_single_adapter_model(seed, tmp_path):
    """add / set / delete / merge / unmerge / disable / save+load / train in random orders: the model
    always computes its active adapter alone (or the base model when disabled), and training the
    active adapter leaves every other adapter unchanged."""
    rng = random.Random(seed)
    batch = inputs()
    base = logits(tiny_bert(), batch)
    model, refs, configs, merged, disabled = tiny_bert(), {}, {}, False, []
    for step in range(16):
        names = list(adapter_configs(model))
        op = rng.choice(applicable_operations(names, merged, disabled))
        if op == "add":
            name, config = rng.choice([n for n in "abc" if n not in names]), rng.choice(CONFIGS)
            (add_adapter(model, name, config) if names else apply_more(model, config=config, adapter_name=name))
            randomize(model, name, seed=step)
            refs[name], configs[name] = single_adapter_reference(model, name, config), config
            assert not close(refs[name], base)  # every adapter shows in the outputs: the test can fail
        elif op == "set":
            set_adapter(model, rng.choice(names))
        elif op == "delete":
            name = rng.choice(names)
            delete_adapter(model, name)
            refs.pop(name)
        elif op == "merge":
            merge(model)
            merged = True
        elif op == "unmerge":
            unmerge(model)
            merged = False
        elif op == "disable":
            disabled.append(disable_adapter(model))
            disabled[-1].__enter__()
        elif op == "enable":
            disabled.pop().__exit__(None, None, None)
        elif op == "save":
            save_adapter(model, tmp_path / str(step))
            fresh = load_adapters(tiny_bert(), tmp_path / str(step))
            for name in names:
                set_adapter(fresh, name)
                assert close(logits(fresh, batch), refs[name]), (step, name)
        elif op == "train":
            active = active_adapter(model)
            others = {n: p.detach().clone() for n, p in model.named_parameters() if f".{active}." not in n}
            params = [p for p in model.parameters() if p.requires_grad]
            assert params and all(f".{active}." in n for n, p in model.named_parameters() if p.requires_grad)
            model.train()
            model(**batch, labels=LABELS).loss.backward()
            torch.optim.SGD(params, lr=0.1).step()
            model.eval()
            assert all(torch.equal(p, others[n]) for n, p in model.named_parameters() if n in others)
            refs[active] = single_adapter_reference(model, active, configs[active])
        names = list(adapter_configs(model))
        expected = base if not names or disabled else refs[active_adapter(model)]
        assert close(logits(model, batch), expected), (step, op)
    for context in reversed(disabled):
        context.__exit__(None, None, None)


def test_compiled_model_follows_set_adapter_disable_and_merge():
    """Dynamo guards on the adapter state: a compiled model never replays a stale graph."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 4))
    apply_more(model, ["0"], nblocks=4, rank=2, adapter_name="a", modules_to_save=["2"])
    add_adapter(model, "b", MoReConfig(target_modules=["0"], nblocks=4, rank=2, modules_to_save=["2"]))
    randomize(model, "a", seed=1), randomize(model, "b", seed=2)
    x = torch.randn(5, 16)
    expected = {}
    with torch.no_grad():
        for name in ("a", "b"):
            set_adapter(model, name)
            expected[name] = model(x)
        with disable_adapter(model):
            expected["off"] = model(x)
        compiled = torch.compile(model, backend="eager")
        set_adapter(model, "a")
        assert torch.equal(compiled(x), expected["a"])
        set_adapter(model, "b")
        assert torch.equal(compiled(x), expected["b"])
        with disable_adapter(compiled):
            assert torch.equal(compiled(x), expected["off"])
        merge(compiled)
        assert close(compiled(x), expected["b"])
        unmerge(compiled)
        set_adapter(compiled, "a")
        assert torch.equal(compiled(x), expected["a"])
    assert len({tuple(v.flatten().tolist()) for v in expected.values()}) == 3  # three different answers


@pytest.mark.parametrize("use_reentrant", [True, False])
def test_gradient_checkpointing_trains_the_adapter(use_reentrant):
    """Trainer(gradient_checkpointing=True): reentrant checkpointing gives no gradients inside a block
    whose inputs are all frozen (PEFT calls enable_input_require_grads for that); here every adapter
    factor gets its gradient, with either variant."""
    model = apply_more(tiny_bert(), rank=2).train()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": use_reentrant})
    model(**inputs(), labels=LABELS).loss.backward()
    grads = [p.grad for p in get_adapter_parameters(model).values()]
    assert grads and all(g is not None and bool(g.abs().sum() > 0) for g in grads[1::2])  # blkdiag2


def test_state_dict_deepcopy_and_pickle_round_trips():
    batch = inputs()
    model = randomize(apply_more(tiny_bert(), rank=2))
    expected = logits(model, batch)
    other = apply_more(tiny_bert(seed=5), rank=2)
    other.load_state_dict(model.state_dict())
    assert torch.equal(logits(other, batch), expected)
    for clone in (copy.deepcopy(model), torch.load(io.BytesIO(_pickled(model)), weights_only=False)):
        assert torch.equal(logits(clone, batch), expected) and list_adapters(clone) == ["default"]
        with disable_adapter(clone):
            assert torch.equal(logits(clone, batch), logits(tiny_bert(), batch))
    merge(model)  # a merged copy unmerges to the same base weights
    clone = unmerge(copy.deepcopy(model))
    assert torch.equal(logits(clone, batch), expected)


def _pickled(model) -> bytes:
    buf = io.BytesIO()
    torch.save(model, buf)
    return buf.getvalue()


def test_dtype_change_while_merged_then_unmerge():
    model = randomize(apply_more(tiny_llama(), rank=2))
    original = {n: p.detach().clone() for n, p in model.named_parameters()}
    merge(model)
    model.to(torch.float64)
    unmerge(model)
    assert all(torch.equal(p, original[n].double()) for n, p in model.named_parameters())


def test_bfloat16_adapter_loads_into_float32_model(tmp_path):
    source = randomize(apply_more(tiny_llama(dtype=torch.bfloat16), rank=2))
    save_adapter(source, tmp_path)
    loaded = load_adapter(tiny_llama(), tmp_path)
    for (n, a), b in zip(get_adapter_parameters(source).items(), get_adapter_parameters(loaded).values(), strict=True):
        assert b.dtype == torch.float32 and torch.equal(a.float(), b), n


def test_double_backward_fused_equals_unfused():
    """A gradient penalty (create_graph=True) through the fused node equals the unfused layer's."""
    torch.manual_seed(0)
    layer = apply_more(nn.Sequential(nn.Linear(16, 16, dtype=torch.float64)), ["0"], nblocks=4, rank=2,
                       modules_to_save=None)[0]  # fmt: skip
    with torch.no_grad():
        layer.more_update["default"].blkdiag2.normal_()
    x = torch.randn(3, 16, dtype=torch.float64, requires_grad=True)
    results = []
    for fused in (True, False):
        layer.fused = fused
        (gx,) = torch.autograd.grad(layer(x).pow(2).sum(), x, create_graph=True)
        update = layer.more_update["default"]
        results.append(torch.autograd.grad(gx.pow(2).sum(), [update.blkdiag1, update.blkdiag2]))
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b)


def test_peft_multi_adapter_folder_is_refused(tmp_path):
    peft = pytest.importorskip("peft")
    lora = peft.get_peft_model(tiny_bert(), peft.LoraConfig(r=2, target_modules=["query"]), adapter_name="x")
    lora.save_pretrained(tmp_path)  # PEFT puts a non-default adapter into tmp_path/x
    model = tiny_bert()
    with pytest.raises(ValueError, match="PEFT LORA adapter"):
        load_adapters(model, tmp_path)
    assert not more_layers(model)


# =============================================================================================
# Issue 27: each test failed on main at 11fa7d3 (before MoRe became a PEFT method)
# =============================================================================================


@pytest.mark.parametrize("how", ["apply_more", "load_adapter", "add_adapter", "get_peft_model"])
def test_adapter_layers_added_in_eval_mode_are_in_eval_mode(how, tmp_path):
    """#27 item 2: adapter layers made on a model in eval mode took train mode (dropout active)
    while model.training was False; they take the mode of the module they wrap."""
    import peft

    model = tiny_bert()  # eval mode; its own dropout is 0, so only the adapter's can differ
    if how == "apply_more":
        apply_more(model, rank=2, dropout=0.5)
    elif how == "load_adapter":
        save_adapter(randomize(apply_more(tiny_bert().train(), rank=2, dropout=0.5)), tmp_path)
        load_adapter(model, tmp_path)
    elif how == "add_adapter":
        apply_more(model, ["query"], rank=2, modules_to_save=None)
        add_adapter(model, "b", MoReConfig(target_modules=["value"], rank=2, dropout=0.5))
        set_adapter(model, "b")
    else:
        model = peft.get_peft_model(model, MoReConfig(rank=2, dropout=0.5))
    randomize(model, active_adapter(model))  # a non-zero update, so that dropout shows
    # the MoRe layers and every dropout (the adapter's, the model's, a saved head's copy); PEFT's
    # ModulesToSaveWrapper containers keep train mode, which changes no computation
    modal = [m for m in model.modules() if isinstance(m, (MoReLinear, nn.Dropout))]
    assert any(isinstance(m, nn.Dropout) and m.p == 0.5 for m in modal) and not any(m.training for m in modal)
    batch = inputs()

    def two_forwards():
        with torch.no_grad():
            torch.manual_seed(0)
            first = model(**batch).logits
            torch.manual_seed(1)
            return first, model(**batch).logits

    first, second = two_forwards()
    assert torch.equal(first, second)
    model.train()
    first, second = two_forwards()
    assert not torch.equal(first, second)  # dropout 0.5 acts in train mode: the check above can fail


@pytest.mark.parametrize("name", ["a\0b", "x" * 256, "é" * 128])  # NUL; 256 bytes; 128 characters, 256 bytes
def test_adapter_name_that_cannot_be_a_folder_name_is_refused_at_creation(name):
    """#27 item 9: accepted by apply_more and failed only at save; now refused by every way of
    creating an adapter, naming adapter_name, the model unchanged."""
    import peft

    model = tiny_bert()
    with pytest.raises(ValueError, match="adapter_name"):
        apply_more(model, rank=2, adapter_name=name)
    assert not more_layers(model) and all(p.requires_grad for p in model.parameters())
    apply_more(model, rank=2)
    with pytest.raises(ValueError, match="adapter_name"):
        add_adapter(model, name, MoReConfig(target_modules=["value"], rank=2))
    assert list_adapters(model) == ["default"]
    base = tiny_bert()
    with pytest.raises(ValueError, match="adapter_name"):
        peft.get_peft_model(base, MoReConfig(rank=2), adapter_name=name)
    assert not more_layers(base)


def test_longest_adapter_name_saves_and_loads(tmp_path):
    name = "x" * 255  # the longest file name
    model = randomize(apply_more(tiny_bert(), rank=2, adapter_name=name), name)
    save_adapter(model, tmp_path)
    loaded = load_adapters(tiny_bert(), tmp_path)
    assert list_adapters(loaded) == [name] and close(logits(loaded, inputs()), logits(model, inputs()))


def test_merge_on_the_meta_device_is_a_named_error():
    """#27 item 8: 'unknown device type for autocast' from deep inside; now a ValueError that
    says what is wrong, nothing merged."""
    import peft

    for model in (
        randomize(apply_more(tiny_bert(), rank=2)).to("meta"),
        peft.get_peft_model(tiny_bert(), MoReConfig(rank=2)).to("meta"),
    ):
        for merging in (merge, merge_and_unload):
            with pytest.raises(ValueError, match="meta device"):
                merging(model)
            assert not any(layer.merged for layer in more_layers(model).values())
