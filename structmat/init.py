"""How factors of the structures start: the same two choices for every structure."""

from __future__ import annotations

import math
from typing import Literal

import torch

Init = Literal["kaiming", "zeros"]


def kaiming_uniform_blocks_(weight: torch.Tensor) -> torch.Tensor:
    """In-place kaiming-uniform (a = sqrt(5), as ``nn.Linear``) per block: bound
    ``1/sqrt(fan_in)`` with the fan-in the last dimension (a block's width)."""
    bound = 1.0 / math.sqrt(weight.shape[-1])
    with torch.no_grad():
        return weight.uniform_(-bound, bound)


def init_factor_(weight: torch.Tensor, init: Init, name: str) -> torch.Tensor:
    """Fill ``weight`` in place by ``init`` (``"kaiming"`` or ``"zeros"``); a bad choice raises
    ``ValueError`` naming the argument ``name``."""
    if init == "kaiming":
        return kaiming_uniform_blocks_(weight)
    if init == "zeros":
        with torch.no_grad():
            return weight.zero_()
    raise ValueError(f"{name} must be 'kaiming' or 'zeros', got {init!r}")
