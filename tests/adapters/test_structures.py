"""The adapter update is any registered structure (issue #28 item 3): MoRe (Monarch), LoRA through
the same layer (low rank) and a LoKr-like Kronecker adapter train, merge and save/load the same way."""

import pytest
import torch
from helpers import inputs, logits, tiny_bert

from structmat.adapters import MoReConfig, apply_more, load_adapter, merge, more_layers, save_adapter, to_lora, unmerge

LABELS = torch.tensor([0, 1, 0])


def train(model, steps=5, lr=5e-2):
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses = []
    model.train()
    for _ in range(steps):
        loss = model(**inputs(), labels=LABELS).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return model.eval(), losses


@pytest.mark.parametrize("structure", ["monarch", "lowrank", "kronecker"])
def test_each_structure_trains_merges_and_round_trips(structure, tmp_path):
    model = apply_more(tiny_bert(), ["query", "value"], rank=2, structure=structure)
    layer = next(iter(more_layers(model).values()))
    assert type(layer.more_update["default"]).__name__.lower().startswith(structure[:3])
    torch.testing.assert_close(logits(model, inputs()), logits(tiny_bert(), inputs()), rtol=0, atol=0)
    model, losses = train(model)
    assert losses[-1] < losses[0]
    trained = logits(model, inputs())
    merge(model)
    assert (logits(model, inputs()) - trained).abs().max() <= 1e-5
    unmerge(model)
    save_adapter(model, tmp_path / "a")
    again = load_adapter(tiny_bert(), tmp_path / "a")
    torch.testing.assert_close(logits(again, inputs()), trained, rtol=0, atol=0)  # bit for bit
    assert again.peft_config["default"].structure == structure


@pytest.mark.parametrize("structure", ["lowrank", "kronecker"])
def test_other_structures_export_to_lora(structure, tmp_path):
    from peft import PeftModel

    model, _ = train(apply_more(tiny_bert(), ["query", "value"], rank=2, structure=structure))
    to_lora(model, tmp_path)
    lora = PeftModel.from_pretrained(tiny_bert(), tmp_path)
    torch.testing.assert_close(logits(lora, inputs()), logits(model, inputs()), rtol=1e-5, atol=1e-5)


def test_kronecker_factor_shape_and_bad_structure():
    model = apply_more(tiny_bert(), config=MoReConfig(
        target_modules=["query"], structure="kronecker", rank=1, structure_options={"a_shape": [4, 8]},
    ))  # fmt: skip
    update = next(iter(more_layers(model).values())).more_update["default"]
    assert tuple(update.A.shape[-2:]) == (4, 8)
    with pytest.raises(ValueError, match="structure"):
        MoReConfig(structure="no_such_family")
    with pytest.raises(ValueError, match="cannot adapt layer.*a_shape"):
        apply_more(tiny_bert(), config=MoReConfig(target_modules=["query"], structure="kronecker",
                                                  structure_options={"a_shape": [5, 5]}))  # fmt: skip
