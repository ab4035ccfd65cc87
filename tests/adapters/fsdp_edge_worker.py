"""One rank of the FSDP2 edge cases of issue 27 (tests/adapters/test_multiprocess.py), launched as
``torchrun --nproc-per-node 2 tests/adapters/fsdp_edge_worker.py OUT``.

Each scenario starts from a tiny Llama (float64) with a MoRe adapter, an unsharded copy as the
reference, then ``fully_shard`` per decoder block and at the root; the outcome of each scenario
(numbers, or the error it raised) goes to ``OUT/result.json`` (written by rank 0), and the test
compares. A scenario that hangs makes the whole run exceed the test's hard timeout;
``faulthandler`` then prints where each rank was.

- ``merge_first``: ``merge_and_unload`` before any forward (was: "invalid python storage").
- ``load_new_name``: ``load_adapter`` under a new adapter name after sharding (was: the same).
- ``trainer_full`` / ``trainer_sharded``: what the transformers ``Trainer`` calls on every rank
  to save a ``PeftModel`` checkpoint with its FSDP2 integration (accelerate), for both state
  dict types: ``Trainer.save_model`` and accelerate's ``save_fsdp_model(adapter_only=True)``,
  run through their own code with the accelerator's settings filled in (the Trainer cannot run
  FSDP on a CPU-only machine).
- ``rank0_only_save``: ``save_adapter`` on rank 0 only (the DDP habit) must raise after its
  ``timeout`` instead of hanging; rank 1 makes no collective call meanwhile. Last, because the
  process group is unusable after a timed-out collective.
"""

import copy
import faulthandler
import json
import os
import sys
import time
import traceback
import types
from pathlib import Path

import peft
import torch
import torch.distributed as dist
from fsdp_worker import outputs
from helpers import randomize_adapter, tiny_llama
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

from structmat.adapters import MoReConfig, apply_more, load_adapter, merge_and_unload, save_adapter
from structmat.adapters.io import adapter_state_dict

CONFIG = dict(nblocks=4, rank=2, target_modules="all-linear", dropout=0.0)
TIMEOUT = 3.0  # seconds save_adapter waits for the other process in rank0_only_save


def adapted(seed: int = 1, peft_model: bool = False) -> torch.nn.Module:
    model = tiny_llama(seed=0, dtype=torch.float64)
    if peft_model:
        model = peft.get_peft_model(model, MoReConfig(**CONFIG, task_type="CAUSAL_LM"))
    else:
        apply_more(model, config=MoReConfig(**CONFIG))
    randomize_adapter(model, seed=seed)
    return model


def shard(model: torch.nn.Module, mesh) -> torch.nn.Module:
    inner = model.base_model.model if isinstance(model, peft.PeftModel) else model
    for layer in inner.model.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(inner, mesh=mesh)
    return model


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def fsdp_accelerator(state_dict_type: str, world: int, rank: int):
    """accelerate's FSDP2 plugin and the accelerator settings the Trainer's calls read."""
    from accelerate import Accelerator, PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    PartialState(cpu=True)  # accelerate's logging needs its state (the process group is ours)
    plugin = FullyShardedDataParallelPlugin(fsdp_version=2, state_dict_type=state_dict_type)
    accelerator = types.SimpleNamespace(
        distributed_type=DistributedType.FSDP, is_fsdp2=True, num_processes=world, process_index=rank,
        is_main_process=rank == 0, wait_for_everyone=dist.barrier, state=types.SimpleNamespace(fsdp_plugin=plugin),
    )  # fmt: skip
    accelerator.get_state_dict = types.MethodType(Accelerator.get_state_dict, accelerator)
    return plugin, accelerator


def trainer_saves(model, folder: Path, state_dict_type: str, world: int, rank: int) -> None:
    """``Trainer._save_checkpoint``'s model saving for a PeftModel under accelerate's FSDP2, on
    this rank: ``Trainer.save_model`` (gathers a FULL_STATE_DICT on every rank, the main one
    writes the adapter folder; nothing for SHARDED_STATE_DICT) and accelerate's
    ``save_fsdp_model(..., adapter_only=True)`` (the FSDP checkpoint used to resume)."""
    from accelerate.utils import save_fsdp_model
    from transformers import Trainer

    plugin, accelerator = fsdp_accelerator(state_dict_type, world, rank)
    trainer = types.SimpleNamespace(
        model=model, accelerator=accelerator, is_fsdp_enabled=True, is_distributed_loading_by_transformers=False,
        processing_class=None, data_collator=None,
        args=types.SimpleNamespace(output_dir=str(folder), should_save=rank == 0, push_to_hub=False),
    )  # fmt: skip
    trainer._save = types.MethodType(Trainer._save, trainer)
    Trainer.save_model(trainer, str(folder), _internal_call=True)
    save_fsdp_model(plugin, accelerator, model, str(folder), adapter_only=True)


def main(out: Path) -> None:
    faulthandler.dump_traceback_later(200, exit=True)  # a hang shows where each rank waits
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    mesh = init_device_mesh("cpu", (world,))
    result: dict[str, object] = {"world": world}

    def scenario(name, run):
        try:
            result[name] = run()
        except Exception as err:  # noqa: BLE001 - recorded for the test, which names it
            result[name] = {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()[-3000:]}
        dist.barrier()

    # #27 item 6: merge_and_unload before any forward
    def merge_first():
        model = adapted()
        want = outputs(merge_and_unload(copy.deepcopy(model)))
        merged = merge_and_unload(shard(model, mesh))
        return {
            "rel": rel(outputs(merged), want),
            "base_rel": rel(outputs(tiny_llama(seed=0, dtype=torch.float64)), want),  # > 0: the merge shows
            "adapter_modules": any("more" in n for n, _ in merged.named_modules()),
        }

    scenario("merge_first", merge_first)

    # #27 item 6: load_adapter under a new name after sharding
    if rank == 0:
        other = adapted(seed=7)
        save_adapter(other, out / "other")
        torch.save(outputs(other), out / "other_outputs.pt")
    dist.barrier()

    def load_new_name():
        model = shard(adapted(), mesh)
        load_adapter(model, out / "other", adapter_name="other")
        want = torch.load(out / "other_outputs.pt")
        return {"rel": rel(outputs(model), want), "adapters": list(model.peft_config)}

    scenario("load_new_name", load_new_name)

    # #27 item 5: the Trainer's calls to save a PeftModel checkpoint under FSDP2
    for kind in ("FULL_STATE_DICT", "SHARDED_STATE_DICT"):

        def trainer_run(kind=kind):
            model = adapted(peft_model=True)
            reference = {k: v.clone() for k, v in adapter_state_dict(model).items()}
            want = outputs(model)
            folder = out / f"trainer_{kind}"
            trainer_saves(shard(model, mesh), folder, kind, world, rank)
            found = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
            res = {"files": found}
            # resume_from_checkpoint: the Trainer loads the FSDP checkpoint into the sharded model
            from accelerate.utils import load_fsdp_model

            fresh = adapted(seed=5, peft_model=True)
            res["before_resume_rel"] = rel(outputs(fresh), want)  # so that resumed_rel can fail
            shard(fresh, mesh)  # then, as the Trainer resumes: no forward of the sharded model before loading
            plugin, accelerator = fsdp_accelerator(kind, world, rank)
            load_fsdp_model(plugin, accelerator, fresh, str(folder), adapter_only=True)
            res["resumed_rel"] = rel(outputs(fresh), want)
            if rank == 0 and "adapter_model.safetensors" in found:
                from structmat.adapters.io import read_adapter

                saved = read_adapter(folder).state
                res["same_keys"] = saved.keys() == reference.keys()
                res["max_diff"] = max(float((saved[k] - reference[k]).abs().max()) for k in reference)
                loaded = peft.PeftModel.from_pretrained(tiny_llama(seed=0, dtype=torch.float64), folder)
                res["loaded_rel"] = rel(outputs(loaded), want)
            if rank == 0 and "pytorch_model_fsdp.bin" in found:  # FULL_STATE_DICT's FSDP checkpoint
                state = torch.load(folder / "pytorch_model_fsdp.bin")
                trained = {k.replace(".default.", "."): v for k, v in state.items()}
                res["fsdp_ckpt_max_diff"] = max(float((trained[k] - reference[k]).abs().max()) for k in reference)
            return res

        scenario(f"trainer_{kind.split('_')[0].lower()}", trainer_run)

    # #27 item 5: save_adapter on rank 0 only fails after its timeout instead of hanging
    model = shard(adapted(), mesh)
    flag = out / "rank0_only_done"
    if rank == 0:
        start = time.monotonic()
        try:
            save_adapter(model, out / "rank0_only", timeout=TIMEOUT)
            result["rank0_only_save"] = {"error": None}
        except Exception as err:  # noqa: BLE001
            result["rank0_only_save"] = {"error": f"{type(err).__name__}: {err}"}
        result["rank0_only_save"]["seconds"] = time.monotonic() - start
        result["rank0_only_save"]["timeout"] = TIMEOUT
        result["rank0_only_save"]["folder_exists"] = (out / "rank0_only").exists()
        (out / "result.json").write_text(json.dumps(result, indent=1))
        flag.write_text("")
    else:
        while not flag.exists():  # no collective call while rank 0 saves
            time.sleep(0.1)
    # the timed-out barrier is still pending in gloo: leave without another collective
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
