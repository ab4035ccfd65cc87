"""``fit_lowrank``: best rank-r approximation (truncated SVD) or a randomized one for large W."""

from __future__ import annotations

from typing import Literal

import torch

from ..approximation import relative_error
from ..checks import check_matrix, check_positive_int, check_rank_fits
from .module import LowRank


def fit_lowrank(
    W: torch.Tensor,
    rank: int,
    *,
    method: Literal["svd", "randomized"] = "svd",
    oversample: int = 10,
    niter: int = 4,
) -> LowRank:
    """Rank-``rank`` approximation ``B @ A`` of ``W`` (``(..., out, in)``, not modified).

    ``method="svd"``: truncated SVD, optimal in Frobenius and spectral norm (Eckart-Young).
    ``method="randomized"``: Halko-Martinsson-Tropp range finder with ``rank + oversample``
    random probes and ``niter`` power iterations (``torch.svd_lowrank``); near-optimal and
    much cheaper when ``rank << min(out, in)``. Either way the returned :class:`LowRank`
    (``batch_shape = W.shape[:-2]``, singular values split ``sqrt`` on each side) carries
    ``fit_error``, the achieved ``||W - BA||_F / ||W||_F`` measured on the result.
    """
    check_matrix("W", W)
    check_positive_int("rank", rank)
    out_f, in_f = W.shape[-2:]
    check_rank_fits(rank, in_f, out_f)
    with torch.no_grad():
        if method == "svd":
            U, S, Vh = torch.linalg.svd(W, full_matrices=False)
            U, S, Vh = U[..., :rank], S[..., :rank], Vh[..., :rank, :]
        elif method == "randomized":
            check_positive_int("niter", niter + 1)  # 0 allowed
            q = min(rank + oversample, out_f, in_f)
            U, S, V = torch.svd_lowrank(W, q=q, niter=niter)
            U, S, Vh = U[..., :rank], S[..., :rank], V[..., :rank].mT
        else:
            raise ValueError(f"method must be 'svd' or 'randomized', got {method!r}")
        sq = S.sqrt()
        lowrank = LowRank.from_factors((Vh * sq.unsqueeze(-1)).contiguous(), (U * sq.unsqueeze(-2)).contiguous())
        lowrank.fit_error = relative_error(W, lowrank.to_dense())
    return lowrank


def lowrank_optimal_error(W: torch.Tensor, rank: int) -> torch.Tensor:
    """``sqrt(sum_{i >= rank} sigma_i(W)^2) / ||W||_F``, shape ``W.shape[:-2]`` (``W`` may be complex)."""
    check_matrix("W", W, allow_complex=True)
    check_positive_int("rank", rank)
    sv = torch.linalg.svdvals(W)
    return sv[..., rank:].square().sum(-1).sqrt() / torch.linalg.matrix_norm(W)
