"""A process that saves MoRe adapters over and over into one folder, for the storage tests.

Run as ``python adapter_writer.py FOLDER [RANK [ADAPTERS]]``. It imports torch and structmat once and then, for
every ``fork`` line read on stdin, forks a child that saves forever (each save's tensors all
filled with one value: ``child_id * 1_000_000 + save_number``) and prints the child's pid;
``kill PID`` SIGKILLs a child and waits until it is gone. This process itself never runs a tensor operation,
so forking it is safe (no thread pool exists yet), and a child starts in milliseconds.
"""

from __future__ import annotations

import os
import signal
import sys

import torch
from torch import nn

from structmat.adapters import MoReConfig, add_adapter, apply_more, save_adapter

SECOND = "second"  # the name of the second adapter of a two-adapter writer


def plain_model() -> nn.Module:
    return nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 64), nn.Linear(64, 512), nn.Linear(512, 512))


def writer_model(rank: int = 2, adapters: int = 1) -> nn.Module:
    """A small model: three adapted layers and a 512x512 head saved in full (1 MB); with
    ``adapters=2`` a second adapter (named :data:`SECOND`) on two of the layers, with its own head."""
    model = apply_more(plain_model(), ["0", "1", "2"], nblocks=4, rank=rank, modules_to_save=["3"])
    if adapters == 2:
        add_adapter(model, SECOND, MoReConfig(target_modules=["0", "2"], nblocks=4, rank=rank, modules_to_save=["3"]))
    return model


def fill(model: nn.Module, value: float) -> None:
    """Every parameter of every adapter (and its head) holds ``value``."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".more_update." in name or ".modules_to_save." in name:
                p.fill_(value)


def save_forever(folder: str, child: int, rank: int = 2, adapters: int = 1) -> None:
    torch.set_num_threads(1)
    model = writer_model(rank, adapters)
    i = 0
    while True:
        fill(model, child * 1_000_000 + i)
        save_adapter(model, folder)
        i += 1


def main() -> None:
    """Commands on stdin: ``fork`` (start a child, print its pid), ``kill PID`` (SIGKILL it, wait
    until it is gone, print ``killed``); anything else ends this process."""
    folder = sys.argv[1]
    rank = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    adapters = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    child = 0
    for line in sys.stdin:
        words = line.split()
        if words == ["fork"]:
            child += 1
            pid = os.fork()
            if pid == 0:
                try:
                    save_forever(folder, child, rank, adapters)
                finally:
                    os._exit(0)
            print(pid, flush=True)
        elif len(words) == 2 and words[0] == "kill":
            pid = int(words[1])
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)  # gone, its file lock released with it
            print("killed", flush=True)
        else:
            break


if __name__ == "__main__":
    main()
