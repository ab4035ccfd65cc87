"""Run by test_finetune.py: a few MoRe training steps, single process or under 2-process DDP."""

import os

import torch
import torch.distributed as dist
from helpers import tiny_bert

from structmat.adapters import apply_more, get_adapter_parameters
from structmat.experiments.loop import train


def global_batches():
    g = torch.Generator().manual_seed(5)
    return [
        {
            "input_ids": torch.randint(0, 64, (8, 6), generator=g),
            "attention_mask": torch.ones(8, 6, dtype=torch.long),
            "labels": torch.randint(0, 2, (8,), generator=g),
        }
        for _ in range(4)
    ]


def train_and_save(out_file: str) -> None:
    model = tiny_bert(seed=0)
    torch.manual_seed(3)
    apply_more(model, rank=2)
    train(model, global_batches(), lr=1e-2, progress=False)
    if not dist.is_initialized() or dist.get_rank() == 0:
        torch.save({k: v.detach().clone() for k, v in get_adapter_parameters(model).items()}, out_file)


def ddp_main(rank: int, world_size: int, init_file: str, out_file: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        train_and_save(out_file)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    train_and_save(os.environ["OUT_FILE"])
