"""Singular-value spectra and rank measures of a matrix or a stack ``(..., m, n)``."""

from __future__ import annotations

import torch

from ..checks import check_matrix


def singular_values(W: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """Singular values, descending, ``(..., min(m, n))``; ``normalize`` divides by the largest."""
    check_matrix("W", W, allow_complex=True)
    sv = torch.linalg.svdvals(W.detach())
    if normalize:
        top = sv[..., :1]
        sv = sv / torch.where(top > 0, top, torch.ones_like(top))
    return sv


def effective_rank(W: torch.Tensor) -> torch.Tensor:
    """Roy & Vetterli (2007): ``exp(H(p))`` with ``p_i = sigma_i / sum_j sigma_j``.

    Between 1 (rank one) and ``min(m, n)`` (all singular values equal); 0 for a zero matrix.
    """
    sv = singular_values(W, normalize=False)
    total = sv.sum(-1, keepdim=True)
    p = sv / torch.where(total > 0, total, torch.ones_like(total))
    entropy = -(p * torch.log(torch.where(p > 0, p, torch.ones_like(p)))).sum(-1)
    return torch.where(total.squeeze(-1) > 0, entropy.exp(), torch.zeros_like(entropy))


def stable_rank(W: torch.Tensor) -> torch.Tensor:
    """``||W||_F^2 / ||W||_2^2`` (between 1 and the rank; 0 for a zero matrix)."""
    sv = singular_values(W, normalize=False)
    top = sv[..., 0]
    return torch.where(
        top > 0, sv.square().sum(-1) / torch.where(top > 0, top, torch.ones_like(top)).square(), torch.zeros_like(top)
    )


def numerical_rank(W: torch.Tensor, rtol: float | None = None) -> torch.Tensor:
    """``torch.linalg.matrix_rank`` with the dtype's default tolerance (or ``rtol``)."""
    check_matrix("W", W, allow_complex=True)
    return torch.linalg.matrix_rank(W.detach(), rtol=rtol)
