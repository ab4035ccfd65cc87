"""MoRe on quantized bases, on CPU: bitsandbytes 8-bit and 4-bit, torchao int8 and int4 weight-only.

Each kind must train (forward and backward), save and load, and merge into a weight of the same
type and dtype whose outputs are within the quantization error of the unmerged model's (issue
#30 item 3); unmerge gives the quantized weight back exactly. On main at 11fa7d3 (issue #27 items
1 and 7): an 8-bit merge cast ΔW to int8 and replaced ``Int8Params`` by a plain parameter, a 4-bit
merge crashed inside bitsandbytes, torchao bases crashed ``apply_more`` (``data_ptr`` of a tensor
subclass) and the fused backward (``aten.mm`` on ``Int8Tensor``).
"""

import copy

import pytest
import torch
from helpers import inputs, logits, tiny_llama
from torch import nn

from structmat.adapters import (
    MoReConfig,
    apply_more,
    load_adapter,
    merge,
    merge_and_unload,
    more_layers,
    save_adapter,
    unmerge,
)

KINDS = ["bnb8", "bnb4", "ao8", "ao4"]


def quantize(kind: str, layer: nn.Linear) -> nn.Module:
    """``layer`` quantized as ``kind`` (a copy; skipped where the library is missing)."""
    if kind.startswith("bnb"):
        bnb = pytest.importorskip("bitsandbytes")
        if kind == "bnb8":
            q = bnb.nn.Linear8bitLt(layer.in_features, layer.out_features, has_fp16_weights=False, threshold=0.0)
        else:
            q = bnb.nn.Linear4bit(layer.in_features, layer.out_features, compute_dtype=torch.float32, quant_type="nf4")
        q.load_state_dict(layer.state_dict())
        return q.to("cpu")  # quantizes
    pytest.importorskip("torchao")
    from torchao.quantization import Int8WeightOnlyConfig, IntxWeightOnlyConfig, quantize_
    from torchao.quantization.granularity import PerGroup

    holder = nn.Sequential(copy.deepcopy(layer))
    config = Int8WeightOnlyConfig() if kind == "ao8" else IntxWeightOnlyConfig(torch.int4, PerGroup(32))
    quantize_(holder, config)
    return holder[0]


class Net(nn.Module):
    def __init__(self, fc: nn.Module):
        super().__init__()
        self.fc = fc
        self.out = nn.Linear(fc.out_features, 3)

    def forward(self, x):
        return self.out(torch.relu(self.fc(x)))


def pair(kind: str, seed: int = 0) -> tuple[Net, Net]:
    """A float network and the same network with ``fc`` quantized."""
    torch.manual_seed(seed)
    float_net = Net(nn.Linear(64, 32))
    quant = Net(quantize(kind, float_net.fc))
    quant.out.load_state_dict(float_net.out.state_dict())
    return float_net, quant


def nonzero_update(model: nn.Module, scale: float = 0.1, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".more_update." in name:
                p.add_(torch.randn(p.shape, generator=g) * scale)


@pytest.mark.parametrize("kind", KINDS)
def test_adapter_on_a_quantized_layer_trains(kind):
    _, net = pair(kind)
    apply_more(net, target_modules=["fc"], rank=2, modules_to_save=None)
    layer = net.fc
    assert layer.quantized is not None and layer.more_update["default"].dtype == torch.float32
    x, y = torch.randn(16, 64), torch.randint(0, 3, (16,))
    opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(15):
        loss = nn.functional.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()  # the fused path steps aside for a quantized weight (it would run aten.mm on it)
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert all(p.grad is None for n, p in net.named_parameters() if not p.requires_grad)


@pytest.mark.parametrize("kind", KINDS)
def test_merge_keeps_type_and_dtype_and_stays_within_the_quantization_error(kind):
    float_net, net = pair(kind)
    x = torch.randn(8, 64)
    apply_more(net, target_modules=["fc"], rank=2, modules_to_save=None)
    nonzero_update(net)
    layer = net.fc
    # the rounding a merge may cost: quantizing W (already in the model) and quantizing W + ΔW
    merged_float = copy.deepcopy(float_net.fc)
    with torch.no_grad():
        merged_float.weight += layer.more_update["default"].to_dense()
    rounding = (float_net.fc(x) - net.fc.base_layer(x)).abs().max() + (
        merged_float(x) - quantize(kind, merged_float)(x)
    ).abs().max()
    base_type, weight_type, weight_dtype = (
        type(layer.base_layer),
        type(layer.base_layer.weight),
        layer.base_layer.weight.dtype,
    )
    before = layer(x)
    merge(net)
    assert layer.merged and type(layer.base_layer) is base_type
    assert type(layer.base_layer.weight) is weight_type and layer.base_layer.weight.dtype == weight_dtype
    assert (layer(x) - before).abs().max() <= 1.5 * rounding
    unmerge(net)
    assert type(layer.base_layer.weight) is weight_type
    assert torch.equal(layer(x), before)  # the very quantized weight comes back


@pytest.mark.parametrize("kind", KINDS)
def test_merge_and_unload_gives_the_quantized_layer_back(kind):
    _, net = pair(kind)
    apply_more(net, target_modules=["fc"], rank=2, modules_to_save=None)
    nonzero_update(net)
    x = torch.randn(8, 64)
    weight_type = type(net.fc.base_layer.weight)
    adapted = net(x)
    plain = merge_and_unload(net)
    assert not more_layers(plain) and type(plain.fc.weight) is weight_type
    assert (plain(x) - adapted).abs().max() <= 0.2 * adapted.abs().max()  # one requantization


@pytest.mark.parametrize("kind", KINDS)
def test_save_and_load_on_a_quantized_base(kind, tmp_path):
    _, net = pair(kind)
    apply_more(net, target_modules=["fc"], rank=2, modules_to_save=None)
    nonzero_update(net)
    x = torch.randn(8, 64)
    save_adapter(net, tmp_path)
    _, fresh = pair(kind)
    load_adapter(fresh, tmp_path)
    torch.testing.assert_close(fresh(x), net(x), rtol=0, atol=0)


def test_merge_that_cannot_requantize_is_refused_before_anything_changes():
    pytest.importorskip("torchao")
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

    net = Net(nn.Linear(64, 32))
    holder = nn.Sequential(net.fc)
    quantize_(holder, Int8DynamicActivationInt8WeightConfig())  # its config cannot be read off the weight
    apply_more(net, target_modules=["fc"], rank=2, modules_to_save=None)
    nonzero_update(net)
    weight = net.fc.base_layer.weight
    with pytest.raises(TypeError, match="cannot merge into Linear with a Int8Tensor weight"):
        merge(net)
    assert net.fc.base_layer.weight is weight and not net.fc.merged


def test_projection_init_on_a_quantized_layer_is_refused():
    _, net = pair("bnb8")
    with pytest.raises(TypeError, match="projection.*quantized Linear8bitLt"):
        apply_more(net, config=MoReConfig(target_modules=["fc"], rank=2, init_weights="projection"))
    assert not more_layers(net)


@pytest.mark.parametrize("how", ["bnb8", "bnb4", "torchao"])
def test_transformers_quantized_model_trains_merges_and_saves(how, tmp_path):
    """A tiny Llama quantized by transformers (``quantization_config``), through PEFT's API."""
    pytest.importorskip("bitsandbytes" if how.startswith("bnb") else "torchao")
    from peft import PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig, TorchAoConfig

    # hidden 64: bitsandbytes' 4-bit CPU kernel needs in_features >= its block size (64)
    tiny_llama(hidden_size=64).save_pretrained(tmp_path / "base")
    if how == "bnb8":
        q = BitsAndBytesConfig(load_in_8bit=True)
    elif how == "bnb4":
        q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.float32)
    else:
        from torchao.quantization import Int8WeightOnlyConfig

        q = TorchAoConfig(Int8WeightOnlyConfig())

    def load():
        return AutoModelForCausalLM.from_pretrained(tmp_path / "base", quantization_config=q, device_map="cpu")

    model = get_peft_model(load(), MoReConfig(target_modules=["q_proj", "v_proj"], rank=2, task_type="CAUSAL_LM"))
    batch = inputs()
    out = model(**batch, labels=batch["input_ids"])
    out.loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    nonzero_update(model)
    expected = logits(model, batch)
    model.save_pretrained(tmp_path / "adapter")
    again = PeftModel.from_pretrained(load(), tmp_path / "adapter")
    torch.testing.assert_close(logits(again, batch), expected, rtol=0, atol=0)
    q_type = type(again.base_model.model.model.layers[0].self_attn.q_proj.base_layer.weight)
    merged = again.merge_and_unload()
    assert type(merged.model.layers[0].self_attn.q_proj.weight) is q_type
    bound = 0.25 if how == "bnb4" else 0.05  # one requantization of W + ΔW, relative to the logits' range
    assert (logits(merged, batch) - expected).abs().max() <= bound * expected.abs().max()
