"""MoRe adapters in 2 gloo processes launched by ``torchrun`` as users launch them: a model
sharded with FSDP2 (``fully_shard`` per decoder block and at the root) trains, saves, loads and
merges as one process does (fsdp_worker.py), also in the edge cases of issue 27 (merge or a new
adapter before any forward, the Trainer's FSDP2 checkpoint calls, ``save_adapter`` on one rank
only: fsdp_edge_worker.py); the plain transformers ``Trainer`` driving DDP on a ``PeftModel``
writes each adapter checkpoint once, from the main process (trainer_worker.py)."""

import contextlib
import json
import os
import pathlib
import signal
import subprocess
import sys

import pytest
import torch
from helpers import REPO, TESTS

from structmat.adapters.io import read_adapter

BIN = os.path.dirname(sys.executable)


def torchrun(worker: str, out, timeout: float = 300) -> None:
    """Run ``worker`` in 2 processes; a run that outlives ``timeout`` (a hang) fails the test, its
    processes killed (torchrun and each worker, which torchrun starts in process groups of their
    own)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(REPO), str(TESTS)]))
    cmd = [f"{BIN}/torchrun", "--nproc-per-node", "2", str(TESTS / "adapters" / worker), str(out)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        for pid in [*descendants(proc.pid), proc.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        _, stderr = proc.communicate()
        pytest.fail(f"{worker} did not finish in {timeout:g} s (a hang):\n{stderr[-4000:]}")
    assert proc.returncode == 0, stderr[-4000:]


def descendants(pid: int) -> list[int]:
    """The processes started by ``pid``, and by those, ... (from /proc; none elsewhere)."""
    children: dict[int, list[int]] = {}
    for stat in pathlib.Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


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
    # every adapter write (PeftModel.save_pretrained) came from rank 0, once per checkpoint and
    # once for save_model
    assert sorted(p.name for p in (tmp_path / "saves").iterdir()) == [
        "rank0-checkpoint-2",
        "rank0-checkpoint-4",
        "rank0-final",
    ]
    for folder in (tmp_path / "run" / "checkpoint-2", tmp_path / "run" / "checkpoint-4", tmp_path / "final"):
        assert not list(folder.glob("model*.safetensors")) and not list(folder.glob("pytorch_model*"))
        assert (folder / "adapter_model.safetensors").stat().st_size < 1_000_000
        read_adapter(folder)  # complete and consistent


# -- issue 27, items 5 and 6: FSDP2 edge cases (fsdp_edge_worker.py) ---------------------------


@pytest.fixture(scope="module")
def fsdp_edge(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("fsdp_edge")
    torchrun("fsdp_edge_worker.py", out, timeout=240)
    return json.loads((out / "result.json").read_text())


def outcome(result: dict, scenario: str) -> dict:
    value = result[scenario]
    assert "traceback" not in value, f"{scenario} raised {value['error']}\n{value['traceback']}"
    return value


@pytest.mark.heavy
def test_merge_and_unload_of_a_sharded_model_before_any_forward(fsdp_edge):
    """Was: 'invalid python storage' (the tied-embeddings check read a sharded weight's storage)."""
    result = outcome(fsdp_edge, "merge_first")
    assert result["rel"] < 1e-12  # = the unsharded model's merge_and_unload
    assert result["base_rel"] > 1e-3  # the merge changes the outputs, so the check above can fail
    assert not result["adapter_modules"]


@pytest.mark.heavy
def test_load_adapter_under_a_new_name_after_sharding(fsdp_edge):
    """Was: the same crash; now the new adapter computes what the unsharded model that saved it did."""
    result = outcome(fsdp_edge, "load_new_name")
    assert result["adapters"] == ["default", "other"]
    assert result["rel"] < 1e-12


@pytest.mark.heavy
def test_trainer_fsdp2_checkpoint_calls_on_a_peft_model(fsdp_edge):
    """What the Trainer calls on every rank to save a PeftModel checkpoint with its FSDP2
    integration finishes (the run's timeout catches a hang), and the checkpoint restores the model:
    FULL_STATE_DICT writes PEFT's adapter folder (the unsharded adapter's tensors exactly) and an
    FSDP checkpoint; SHARDED_STATE_DICT (accelerate's FSDP2 default; the Trainer passes FULL_STATE_DICT
    unless told otherwise) writes DCP shards only. Both resume."""
    full = outcome(fsdp_edge, "trainer_full")
    assert {"adapter_model.safetensors", "adapter_config.json", "pytorch_model_fsdp.bin"} <= set(full["files"])
    assert full["same_keys"] and full["max_diff"] == 0 and full["fsdp_ckpt_max_diff"] == 0
    assert full["loaded_rel"] < 1e-12  # PeftModel.from_pretrained of the folder, unsharded
    sharded = outcome(fsdp_edge, "trainer_sharded")
    assert sharded["files"] == ["pytorch_model_fsdp_0"]
    for result in (full, sharded):  # resume_from_checkpoint: load_fsdp_model into a sharded model
        assert result["before_resume_rel"] > 1e-3 and result["resumed_rel"] < 1e-12


@pytest.mark.heavy
def test_save_adapter_on_rank0_only_fails_after_its_timeout(fsdp_edge):
    """Was: rank 0 waited forever for the others' part of the all-gather."""
    result = fsdp_edge["rank0_only_save"]
    assert result["error"] is not None and "must be called on every process" in result["error"], result
    assert result["timeout"] <= result["seconds"] < result["timeout"] + 60
    assert not result["folder_exists"]  # nothing written
