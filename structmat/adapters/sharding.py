"""Adapters on sharded models (FSDP2 ``fully_shard``, whose parameters are ``DTensor``\\ s).

Outside forward, a sharded parameter holds only this process's shard. Saving needs the whole
tensor (a collective: every process must call), loading and merging write each process's shard
of a whole tensor. On plain tensors every helper here is the identity, so single-process code
pays nothing.
"""

import torch
import torch.distributed as dist


def is_sharded(t: torch.Tensor) -> bool:
    """Whether ``t`` is a ``DTensor`` (a sharded or replicated parameter)."""
    return hasattr(t, "device_mesh") and hasattr(t, "full_tensor")


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor behind ``t``; for a ``DTensor`` this all-gathers (every process calls)."""
    return t.full_tensor() if is_sharded(t) else t


def shard_like(full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``full`` laid out as ``like``: the same shards on the same mesh when ``like`` is a
    ``DTensor`` (no communication: every process holds ``full``), else ``full`` itself."""
    if not is_sharded(like):
        return full
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(full, like.device_mesh, like.placements, src_data_rank=None)


def is_main_process() -> bool:
    """Rank 0 of the default process group, or ``True`` when not distributed."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0
