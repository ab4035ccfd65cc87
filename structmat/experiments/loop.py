"""A plain torch training loop that also runs under ``torchrun`` (DDP, gloo or nccl).

Each global batch is split across ranks (rank ``r`` takes rows ``r::world``); gradients are
averaged by DDP, so a run on N processes follows the same trajectory as one process on the
same global batches (up to float rounding).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn

from ..progress import progress_bar

Batch = dict[str, torch.Tensor]


@dataclass
class TrainStats:
    losses: list[float] = field(default_factory=list)
    step_seconds: list[float] = field(default_factory=list)

    @property
    def median_step_seconds(self) -> float:
        s = sorted(self.step_seconds[1:] or self.step_seconds)  # first step warms up
        return s[len(s) // 2] if s else float("nan")


def world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def to_device(batch: Batch, device: torch.device) -> Batch:
    return {k: v.to(device) for k, v in batch.items()}


def shard(batch: Batch, rank: int, size: int) -> Batch:
    return {k: v[rank::size] for k, v in batch.items()}


def global_mean(value: torch.Tensor, count: int, size: int) -> float:
    """The mean over all ranks' examples of a per-rank mean ``value`` over ``count`` examples (the
    loss a single process would log for the global batch)."""
    if size == 1:
        return float(value)
    both = torch.stack([value.double() * count, torch.tensor(float(count), dtype=torch.float64, device=value.device)])
    dist.all_reduce(both)
    return float(both[0] / both[1])


def train(
    model: nn.Module,
    batches: Sequence[Batch],
    *,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    warmup: float = 0.06,
    loss_fn: Callable[[nn.Module, Batch], torch.Tensor] | None = None,
    progress: bool | None = None,
    desc: str = "train",
    stats: TrainStats | None = None,
) -> TrainStats:
    """AdamW on the trainable parameters, linear warm-up then linear decay, one pass over ``batches``.

    ``loss_fn(model, batch)`` defaults to ``model(**batch).loss``. Under ``torch.distributed``
    the model is wrapped in DDP and every batch is sharded across ranks. ``stats``: filled in
    as training goes (so a caller keeps the losses up to a ``FloatingPointError``, raised when
    the loss becomes NaN or inf).
    """
    rank, size = world()
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model has no trainable parameters")
    runner = nn.parallel.DistributedDataParallel(model) if size > 1 else model
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    total = len(batches)
    warm = max(1, int(warmup * total))

    def schedule(step: int) -> float:
        return (step + 1) / warm if step < warm else max(0.0, (total - step) / max(1, total - warm))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    loss_fn = loss_fn or (lambda m, b: m(**b).loss)
    stats = stats if stats is not None else TrainStats()
    model.train()
    bar = progress_bar(batches, show=False if rank != 0 else progress, desc=desc, leave=False)
    device = params[0].device
    for batch in bar:
        t0 = time.perf_counter()
        local = to_device(shard(batch, rank, size), device)
        loss = loss_fn(runner, local)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        stats.step_seconds.append(time.perf_counter() - t0)
        stats.losses.append(global_mean(loss.detach(), len(next(iter(local.values()))), size))
        if not math.isfinite(stats.losses[-1]):
            raise FloatingPointError(f"training loss became {stats.losses[-1]} at step {len(stats.losses)}")
        bar.set_postfix(loss=f"{stats.losses[-1]:.4f}", refresh=False)
    model.eval()
    return stats


def saved_tensor_bytes(fn: Callable[[], torch.Tensor], exclude: Iterable[torch.Tensor] = ()) -> int:
    """Bytes of the distinct storages autograd keeps for backward while ``fn()`` runs, then
    runs backward on its sum. Parameters and ``exclude`` are left out: this is the
    activation memory of a training step, counted exactly (CPU has no allocator statistics).
    """
    skip = {t.untyped_storage().data_ptr() for t in exclude}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in skip and not isinstance(t, nn.Parameter):
            seen[ptr] = max(seen.get(ptr, 0), t.untyped_storage().nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    out.sum().backward()
    return sum(seen.values())


def training_memory_bytes(model: nn.Module, batch: Batch, loss_fn=None) -> int:
    """Bytes one training step holds beyond the frozen weights: tensors saved for backward
    (activations, via :func:`saved_tensor_bytes`) plus gradients and AdamW state (2 tensors)
    of the trainable parameters. Deterministic and comparable across methods on CPU.
    """
    loss_fn = loss_fn or (lambda m, b: m(**b).loss)
    model.train()
    batch = to_device(batch, next(model.parameters()).device)
    activations = saved_tensor_bytes(lambda: loss_fn(model, batch), exclude=list(model.parameters()))
    model.zero_grad(set_to_none=True)
    model.eval()
    trainable = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    return activations + 3 * trainable
