"""Regression tests for adapter states that used to give a wrong answer without an error (issue 15).

Each test failed on main at 98a60bb and passes now.
"""

import warnings

import pytest
import torch
from helpers import inputs, logits, randomize_adapter, tiny_bert, tiny_llama
from torch import nn

from structmat.adapters import (
    apply_more,
    disable_adapter,
    load_adapter,
    merge,
    merge_and_unload,
    more_layers,
    save_adapter,
    unmerge,
)


def randomize_head(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if p.requires_grad and "classifier" in n:
                p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype))


# -- 1. shared / tied weights --------------------------------------------------------------


def two_layers_sharing_a_weight():
    torch.manual_seed(0)
    first, second = nn.Linear(8, 8, dtype=torch.float64), nn.Linear(8, 8, dtype=torch.float64)
    second.weight = first.weight
    return nn.Sequential(first, nn.Tanh(), second)


def test_merge_two_targets_sharing_one_weight():
    model = two_layers_sharing_a_weight()
    shared = model[0].weight
    original = shared.detach().clone()
    with pytest.warns(UserWarning, match=r"'0'.*shares its weight with '2'"):
        apply_more(model, ["0", "2"], nblocks=2, rank=2)
    randomize_adapter(model)
    x = torch.randn(5, 8, dtype=torch.float64)
    adapted = model(x)
    merge(model)
    torch.testing.assert_close(model(x), adapted, rtol=1e-12, atol=1e-12)
    unmerge(model)
    first, second = model[0].base_layer.weight, model[2].base_layer.weight
    assert first is shared and second is shared  # the tie itself is back
    assert torch.equal(shared, original)  # bit for bit
    torch.testing.assert_close(model(x), adapted, rtol=0, atol=0)


def tied_llama():
    model = tiny_llama(tie_word_embeddings=True)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    return model


def test_tied_lm_head_merge_and_unload_leaves_embeddings_alone(tmp_path):
    model = tied_llama()
    embeddings = model.model.embed_tokens.weight.detach().clone()
    with pytest.warns(UserWarning, match=r"'lm_head' shares its weight with 'model.embed_tokens'"):
        apply_more(model, ["lm_head", "q_proj"], nblocks=4, rank=2)
    randomize_adapter(model)
    batch = inputs()
    adapted = logits(model, batch)
    with pytest.warns(UserWarning, match="tie_word_embeddings"):
        plain = merge_and_unload(model)
    assert torch.equal(plain.model.embed_tokens.weight, embeddings)  # a module that was not targeted
    torch.testing.assert_close(logits(plain, batch), adapted, rtol=1e-5, atol=1e-5)
    # the merged model saves and loads as what it is: the head is no longer tied
    from transformers import LlamaForCausalLM

    plain.save_pretrained(tmp_path)
    again = LlamaForCausalLM.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(logits(again, batch), adapted, rtol=1e-5, atol=1e-5)
    assert torch.equal(again.model.embed_tokens.weight, embeddings)


def test_tied_lm_head_unmerge_restores_the_tie_exactly():
    model = tied_llama()
    shared = model.lm_head.weight
    original = shared.detach().clone()
    with pytest.warns(UserWarning):
        apply_more(model, ["lm_head"], nblocks=4, rank=2)
    randomize_adapter(model)
    batch = inputs()
    adapted = logits(model, batch)
    merge(model)
    assert torch.equal(model.model.embed_tokens.weight, original)
    torch.testing.assert_close(logits(model, batch), adapted, rtol=1e-5, atol=1e-5)
    unmerge(model)
    assert model.lm_head.base_layer.weight is shared is model.model.embed_tokens.weight
    assert torch.equal(shared, original)


# -- 2. loading into a merged model ---------------------------------------------------------


def test_load_adapter_into_merged_model_refused(tmp_path):
    source = apply_more(tiny_bert(), rank=2)
    randomize_adapter(source, seed=1)
    save_adapter(source, tmp_path)
    model = apply_more(tiny_bert(), rank=2)
    randomize_adapter(model, seed=2)
    merge(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="merged"):
        load_adapter(model, tmp_path)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


# -- 3. a failed load leaves the model as it was --------------------------------------------


def test_failed_load_changes_nothing(tmp_path):
    source = apply_more(tiny_bert(), rank=2)
    randomize_adapter(source, seed=1)
    randomize_head(source, seed=5)
    save_adapter(source, tmp_path)
    model = apply_more(tiny_bert(), rank=1)
    randomize_adapter(model, seed=2)
    randomize_head(model, seed=6)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"attention\.self\.query.*blkdiag1.*\(4, 2, 8\).*\(4, 1, 8\)"):
        load_adapter(model, tmp_path)
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


# -- 4. disable_adapter gives the base model, trained head included -------------------------


def test_disable_adapter_uses_the_original_head():
    base = tiny_bert()
    batch = inputs()
    expected = logits(base, batch)
    model = apply_more(tiny_bert(), rank=2)  # modules_to_save="auto": the classifier
    randomize_adapter(model)
    randomize_head(model)
    assert not torch.allclose(logits(model, batch), expected)
    with disable_adapter(model):
        torch.testing.assert_close(logits(model, batch), expected, rtol=0, atol=0)
    assert not torch.allclose(logits(model, batch), expected)  # enabled again afterwards


# -- 5. hooks on the base layer -------------------------------------------------------------


def test_backward_hook_on_base_layer_fires():
    model = apply_more(tiny_bert(), rank=1)
    layer = list(more_layers(model).values())[-1]  # its input depends on earlier adapters: it needs a gradient
    calls = []
    layer.base_layer.register_full_backward_hook(lambda *args: calls.append(1))
    batch = inputs()
    model(**batch, labels=torch.tensor([0, 1, 0])).loss.backward()
    assert len(calls) == 1


def test_backward_pre_hook_on_base_layer_fires():
    model = apply_more(tiny_bert(), rank=1)
    layer = list(more_layers(model).values())[-1]
    calls = []
    layer.base_layer.register_full_backward_pre_hook(lambda *args: calls.append(1))
    model(**inputs(), labels=torch.tensor([0, 1, 0])).loss.backward()
    assert len(calls) == 1


# -- 6. compiled models ---------------------------------------------------------------------


def test_save_and_load_through_torch_compile(tmp_path):
    model = apply_more(tiny_bert(), rank=2)
    randomize_adapter(model)
    batch = inputs()
    expected = logits(model, batch)
    compiled = torch.compile(model)
    save_adapter(compiled, tmp_path)
    from safetensors import safe_open

    with safe_open(str(tmp_path / "adapter_model.safetensors"), "pt") as f:
        assert not any("_orig_mod" in k for k in f.keys())
    plain = load_adapter(tiny_bert(), tmp_path)
    torch.testing.assert_close(logits(plain, batch), expected, rtol=0, atol=0)
    target = apply_more(tiny_bert(), rank=2)
    load_adapter(torch.compile(target), tmp_path)
    torch.testing.assert_close(logits(target, batch), expected, rtol=0, atol=0)


# -- 7. zero tokens on every path -----------------------------------------------------------


@pytest.mark.parametrize("setting", ["unfused", "dropout", "hook", "wide"])
def test_zero_tokens_give_empty_output(setting):
    nblocks, rank = (4, 16) if setting == "wide" else (4, 2)  # wide: middle 64 takes the bmm path
    model = apply_more(tiny_bert(), target_modules=["query"], nblocks=nblocks, rank=rank,
                       dropout=0.1 if setting == "dropout" else 0.0)  # fmt: skip
    layer = next(iter(more_layers(model).values()))
    if setting == "unfused":
        layer.fused = False
    if setting == "hook":
        layer.base_layer.register_forward_hook(lambda *args: None)
    layer.train(setting == "dropout")
    for shape in [(0, 32), (2, 0, 32)]:
        x = torch.randn(shape, requires_grad=True)
        y = layer(x)
        assert y.shape == (*shape[:-1], 32)
        y.sum().backward()
        assert x.grad.shape == x.shape


def test_no_warning_for_untied_targets():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        apply_more(tiny_llama(), target_modules="all-linear")
