"""Small helpers shared by the fit_* functions."""

from __future__ import annotations

import torch


def relative_error(W: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
    """``||W - M||_F / ||W||_F`` over the last two dims, shape ``W.shape[:-2]``.

    A zero ``W`` gives 0 when ``M`` is zero too (nothing to approximate), else inf.
    """
    num = torch.linalg.matrix_norm(W - M)
    den = torch.linalg.matrix_norm(W)
    return torch.where(
        den > 0,
        num / torch.where(den > 0, den, torch.ones_like(den)),
        torch.where(num > 0, torch.full_like(num, float("inf")), torch.zeros_like(num)),
    )
