"""``fit_lowrank``: best rank-r approximation (truncated SVD) or a randomized one for large W."""

from __future__ import annotations

from typing import Literal

import torch

from ..approximation import normalized, relative_error_in_parts
from ..checks import check_matrix, check_positive_int, check_useful_rank
from ..randomized import NITER, OVERSAMPLE, check_sketch_args, prefer_randomized, randomized_svd
from .module import LowRank

METHODS: tuple[str, ...] = ("svd", "randomized", "auto")
PARTS = 8  # fit_error is summed over this many row blocks of W - B @ A (one exists at a time)


def _check_rank(W: torch.Tensor, rank: object) -> int:
    check_positive_int("rank", rank)
    out_f, in_f = W.shape[-2:]
    check_useful_rank(rank, min(out_f, in_f), f"a low-rank ({out_f}, {in_f}) matrix")
    return rank


def fit_lowrank(
    W: torch.Tensor,
    rank: int,
    *,
    method: Literal["svd", "randomized", "auto"] = "svd",
    oversample: int = OVERSAMPLE,
    niter: int = NITER,
    seed: int | None = 0,
) -> LowRank:
    """Rank-``rank`` approximation ``B @ A`` of ``W`` (``(..., out, in)``, not modified).

    ``method="svd"``: truncated SVD, optimal in Frobenius and spectral norm (Eckart-Young).
    ``method="randomized"``: Halko-Martinsson-Tropp range finder with ``rank + oversample``
    random probes and ``niter`` power iterations (:func:`structmat.randomized.randomized_svd`,
    the range finder :func:`fit_monarch` uses too); near-optimal and much cheaper when
    ``rank << min(out, in)``. Its probes come from ``seed`` and leave the global RNG alone
    (``seed=None``: drawn from the global RNG).
    ``method="auto"``: ``"randomized"`` where :func:`structmat.randomized.prefer_randomized`
    says it wins (with the defaults ``20 * (rank + 20) <= min(out, in)``: rank up to 31 of a
    1024-wide matrix, 184 of a 4096-wide one), else ``"svd"``; the same rule as
    :func:`fit_monarch`'s, per matrix.
    Either way the returned :class:`LowRank` (``batch_shape = W.shape[:-2]``, ``W``'s dtype,
    singular values split ``sqrt`` on each side) carries ``fit_error``, the achieved
    ``||W - BA||_F / ||W||_F`` measured exactly on the result (row block by row block, so that
    no dense ``B @ A`` is made), and ``fit_info``: the method that ran (what ``"auto"`` chose) and,
    for ``"randomized"``, its ``oversample``, ``niter`` and ``seed``.

    The work is done on ``W / max|W|`` (float32 for float16/bfloat16 ``W``), so the relative
    error does not depend on the scale of ``W``. A rank above ``min(out, in)`` adds no capacity
    and is refused (:func:`structmat.checks.check_useful_rank`).
    """
    check_matrix("W", W)
    _check_rank(W, rank)
    check_sketch_args(oversample, niter, seed)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    out_f, in_f = W.shape[-2:]
    if method == "auto":
        method = "randomized" if prefer_randomized(rank, out_f, in_f, oversample, niter) else "svd"
    Wn, scale = normalized(W)  # (..., out, in), (..., 1, 1)
    with torch.no_grad():
        if method == "svd":
            U, S, Vh = torch.linalg.svd(Wn, full_matrices=False)
            U, S, Vh = U[..., :rank], S[..., :rank], Vh[..., :rank, :]
        else:  # U (..., out, rank), S (..., rank), Vh (..., rank, in)
            U, S, Vh = randomized_svd(Wn, rank, oversample=oversample, niter=niter, seed=seed)
        sq = S.sqrt()  # (..., rank)
        A = Vh * sq.unsqueeze(-1)  # (..., rank, in), of W / scale
        B = U * sq.unsqueeze(-2)  # (..., out, rank)
        root = scale.sqrt()  # (..., 1, 1): half of the scale on each factor
        lowrank = LowRank.from_factors((A * root).to(W.dtype).contiguous(), (B * root).to(W.dtype).contiguous())
        # measured on the returned factors (rounded to W's dtype), brought back to W / scale
        A_back, B_back = lowrank.A.to(Wn.dtype) / root, lowrank.B.to(Wn.dtype) / root
        step = -(-out_f // PARTS)
        parts = ((Wn[..., i : i + step, :], B_back[..., i : i + step, :] @ A_back) for i in range(0, out_f, step))
        lowrank.fit_error = relative_error_in_parts(Wn, parts).to(W.dtype)
    lowrank.fit_info = {"method": method}
    if method == "randomized":
        lowrank.fit_info |= {"oversample": oversample, "niter": niter, "seed": seed}
    return lowrank


def lowrank_optimal_error(W: torch.Tensor, rank: int) -> torch.Tensor:
    """``sqrt(sum_{i >= rank} sigma_i(W)^2) / ||W||_F``, shape ``W.shape[:-2]``, in ``W``'s real dtype
    (0 for a zero ``W``; ``W`` may be complex); computed on ``W / max|W|``, so it does not depend on
    the scale."""
    check_matrix("W", W, allow_complex=True)
    _check_rank(W, rank)
    Wn, _ = normalized(W)
    with torch.no_grad():
        sv = torch.linalg.svdvals(Wn)  # (..., min(out, in))
        total = sv.square().sum(-1)
        tail = sv[..., rank:].square().sum(-1)
        err = torch.where(total > 0, tail / torch.where(total > 0, total, torch.ones_like(total)), total).sqrt()
    return err.to(W.real.dtype if W.is_complex() else W.dtype)
