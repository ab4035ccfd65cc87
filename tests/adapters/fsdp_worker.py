"""One rank of the FSDP2 test (tests/adapters/test_multiprocess.py), launched as
``torchrun --nproc-per-node 2 tests/adapters/fsdp_worker.py OUT``.

Every rank builds the same tiny Llama with a MoRe adapter (float64) and an unsharded copy as the
one-process reference. The copy sees the whole global batch; the sharded model (``fully_shard``
per decoder block and at the root) sees this rank's half. Rank 0 writes what it measured to
``OUT/result.json``; the test compares.
"""

import copy
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from helpers import randomize_adapter, tiny_llama
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

from structmat.adapters import (
    MoReConfig,
    apply_more,
    get_adapter_parameters,
    load_adapter,
    merge,
    merge_and_unload,
    save_adapter,
    unmerge,
)

STEPS, LR = 3, 0.05


def batch(seed: int, rows: slice | None = None) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 64, (4, 8), generator=g)  # (global batch, length)
    ids = ids if rows is None else ids[rows]
    return {"input_ids": ids, "labels": ids}


def full(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def max_rel(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys(), (sorted(a), sorted(b))
    return max(float((full(a[k]) - full(b[k])).abs().max() / full(b[k]).abs().max().clamp_min(1e-300)) for k in a)


def outputs(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch(99)).logits


def main(out: Path) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    mesh = init_device_mesh("cpu", (world,))
    rows = slice(rank * 4 // world, (rank + 1) * 4 // world)
    result: dict[str, object] = {"world": world}

    model = tiny_llama(seed=0, dtype=torch.float64).train()
    apply_more(model, config=MoReConfig(nblocks=4, rank=2, target_modules="all-linear", dropout=0.0))
    randomize_adapter(model, seed=1)
    reference = copy.deepcopy(model)  # the one-process run
    for layer in model.model.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)

    # save from the sharded model (all ranks call, rank 0 writes) = save from the unsharded one
    save_adapter(model, out / "sharded_init")
    if rank == 0:
        save_adapter(reference, out / "reference_init")
    dist.barrier()

    # train: the same global batches, mean loss; FSDP averages the gradients over the ranks
    opt = torch.optim.SGD(get_adapter_parameters(model).values(), lr=LR)
    opt_ref = torch.optim.SGD(get_adapter_parameters(reference).values(), lr=LR)
    losses, losses_ref, grad_rel = [], [], []
    for step in range(STEPS):
        loss = model(**batch(step, rows)).loss
        loss.backward()
        mean = loss.detach().clone()
        dist.all_reduce(mean)
        losses.append(float(mean) / world)
        loss_ref = reference(**batch(step)).loss
        loss_ref.backward()
        losses_ref.append(float(loss_ref))
        grads = {k: p.grad for k, p in get_adapter_parameters(model).items()}
        grads_ref = {k: p.grad for k, p in get_adapter_parameters(reference).items()}
        grad_rel.append(max_rel(grads, grads_ref))
        for o in (opt, opt_ref):
            o.step()
            o.zero_grad()
    result.update(losses=losses, losses_ref=losses_ref, grad_rel=grad_rel)
    trained = {k: full(p.detach()) for k, p in get_adapter_parameters(model).items()}
    result["trained_rel"] = max_rel(trained, dict(get_adapter_parameters(reference)))
    result["outputs_rel_after_training"] = float(
        (outputs(model) - outputs(reference)).abs().max() / outputs(reference).abs().max()
    )

    # load into the sharded model an adapter saved by the reference: the sharded model computes it
    if rank == 0:
        other = copy.deepcopy(reference)
        randomize_adapter(other, seed=7)
        save_adapter(other, out / "other")
        torch.save(outputs(other), out / "other_outputs.pt")
    dist.barrier()
    load_adapter(model, out / "other")
    want = torch.load(out / "other_outputs.pt")
    result["load_outputs_rel"] = float((outputs(model) - want).abs().max() / want.abs().max())

    # merge then unmerge of the sharded model gives back the very same weights
    def base_weights() -> dict[str, torch.Tensor]:
        return {n: full(p.detach()).clone() for n, p in model.named_parameters() if "base_layer" in n}

    before = base_weights()
    merge(model)
    result["merged_changed_weights"] = sum(not torch.equal(before[n], w) for n, w in base_weights().items())
    result["merged_outputs_rel"] = float((outputs(model) - want).abs().max() / want.abs().max())
    unmerge(model)
    result["unmerge_exact"] = all(torch.equal(before[n], w) for n, w in base_weights().items())

    # merge_and_unload of the sharded model computes what the unsharded merged model computes
    load_adapter(reference, out / "other")
    merged_ref = merge_and_unload(reference)
    merged = merge_and_unload(model)
    want = outputs(merged_ref)
    result["merge_outputs_rel"] = float((outputs(merged) - want).abs().max() / want.abs().max())
    result["merged_has_adapter_modules"] = any("more" in n for n, _ in merged.named_modules())

    if rank == 0:
        (out / "result.json").write_text(json.dumps(result, indent=1))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
