"""MoRe adapters in 2 gloo processes launched by ``torchrun`` as users launch them: a model
sharded with FSDP2 (``fully_shard`` per decoder block and at the root) trains, saves, loads and
merges as one process does (fsdp_worker.py); ``MoReTrainer`` driving DDP writes each adapter
checkpoint once, from the main process (trainer_worker.py)."""

import json
import os
import subprocess
import sys

import pytest
import torch
from helpers import REPO, TESTS

from structmat.adapters.io import read_adapter

BIN = os.path.dirname(sys.executable)


def torchrun(worker: str, out) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(REPO), str(TESTS)]))
    cmd = [f"{BIN}/torchrun", "--nproc-per-node", "2", str(TESTS / "adapters" / worker), str(out)]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-4000:]


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory) -> tuple[dict, object]:
    out = tmp_path_factory.mktemp("fsdp")
    torchrun("fsdp_worker.py", out)
    return json.loads((out / "result.json").read_text()), out


@pytest.mark.heavy
def test_sharded_training_equals_one_process(fsdp_run):
    result, _ = fsdp_run
    assert result["world"] == 2
    assert result["losses"] == pytest.approx(result["losses_ref"], rel=1e-12)  # float64
    assert max(result["grad_rel"]) < 1e-10  # adapter gradients, all parameters, every step
    assert result["trained_rel"] < 1e-10
    assert result["outputs_rel_after_training"] < 1e-12


@pytest.mark.heavy
def test_save_from_sharded_model_writes_the_unsharded_files(fsdp_run):
    _, out = fsdp_run
    name = "adapter_config.json"
    assert (out / "sharded_init" / name).read_bytes() == (out / "reference_init" / name).read_bytes()
    # the weights files hold the same tensors and metadata (safetensors orders the metadata
    # map differently in each process, so the bytes are not compared)
    sharded, reference = read_adapter(out / "sharded_init"), read_adapter(out / "reference_init")
    assert sharded.config == reference.config
    assert sharded.state.keys() == reference.state.keys()
    for key, tensor in reference.state.items():
        assert torch.equal(sharded.state[key], tensor), key


@pytest.mark.heavy
def test_load_and_merge_into_sharded_model(fsdp_run):
    result, _ = fsdp_run
    assert result["load_outputs_rel"] < 1e-12  # computes the loaded adapter
    assert result["merged_changed_weights"] > 0  # merge wrote W + ΔW into the shards ...
    assert result["merged_outputs_rel"] < 1e-12  # ... which compute the adapted model
    assert result["unmerge_exact"]  # and unmerge gives back the weights bit for bit
    assert result["merge_outputs_rel"] < 1e-12  # merge_and_unload = the unsharded merged model
    assert not result["merged_has_adapter_modules"]


@pytest.mark.heavy
def test_trainer_under_torchrun_writes_each_checkpoint_once(tmp_path):
    torchrun("trainer_worker.py", tmp_path)
    assert (tmp_path / "world.txt").read_text().split()[0] == "2"
    # every adapter write came from rank 0, once per checkpoint and once for save_model
    assert sorted(p.name for p in (tmp_path / "saves").iterdir()) == [
        "rank0-checkpoint-2",
        "rank0-checkpoint-4",
        "rank0-final",
    ]
    for folder in (tmp_path / "run" / "checkpoint-2", tmp_path / "run" / "checkpoint-4", tmp_path / "final"):
        assert not list(folder.glob("model*.safetensors")) and not list(folder.glob("pytorch_model*"))
        assert (folder / "adapter_model.safetensors").stat().st_size < 1_000_000
        read_adapter(folder)  # complete and consistent
