"""The randomized range finder both closed-form fits share (Halko, Martinsson & Tropp 2011).

For the top ``k`` singular triplets of a matrix ``A`` (``m x n``) only the range of its top ``k``
left singular vectors matters. A Gaussian test matrix ``Omega`` of ``k + oversample`` columns
samples that range (``Y = A @ Omega``); ``niter`` power iterations (``Y = A A^H Y``, with a QR
after every product so that float32 keeps the smaller directions) sharpen it; the SVD of the
small ``B = Q^H A`` then gives the triplets (HMT, algorithms 4.4 and 5.1). Each pass over ``A``
is one matmul with a thin matrix, so ``2 * niter + 2`` passes cost about
``4 (niter + 1) m n (k + oversample)`` flops instead of an SVD's ``O(m n min(m, n))``, and the
only new memory is the thin ``(m or n) x (k + oversample)`` matrices: ``A`` is read in place,
as any strided view (a Monarch block of ``W`` is one without a copy).
"""

from __future__ import annotations

import torch

from .approximation import seeded
from .checks import check_nonnegative_int

# Defaults chosen on the matrices (#29: Gaussian, low rank 32 + 10% noise, MiniLM and
# SmolLM2 layers; fit_monarch at 4096^2, nblocks 4, ranks 1-8): (oversample, niter) = (10, 4) left
# up to 1.0007x the optimal error (low rank + noise, rank 8), (20, 4) up to 1.00021x (Gaussian,
# rank 8) and (10, 6) 1.00022x; extra test vectors cost little next to extra passes over W (each
# thin matmul is bound by reading W), so the width goes up rather than the iterations.
OVERSAMPLE = 20
NITER = 4
# "auto" takes the range finder when its passes cost at most this fraction of an exact SVD's
# flops (see prefer_randomized) and the matrix is at least AUTO_MIN_SIZE on its short side
AUTO_MIN_SIZE = 256


def check_sketch_args(oversample: object, niter: object, seed: object) -> None:
    """Refuse a bad ``oversample``/``niter`` (integers >= 0) or ``seed`` (an int or None), naming it."""
    check_nonnegative_int("oversample", oversample)
    check_nonnegative_int("niter", niter)
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise TypeError(f"seed must be an int or None, got {seed!r}")


def sketch_width(k: int, m: int, n: int, oversample: int = OVERSAMPLE) -> int:
    """Columns of the test matrix: ``k + oversample``, at most ``min(m, n)`` (then the range is all
    of ``A``'s and the result is exact up to rounding)."""
    return min(k + oversample, m, n)


def prefer_randomized(k: int, m: int, n: int, oversample: int = OVERSAMPLE, niter: int = NITER) -> bool:
    """The ``method="auto"`` rule of :func:`fit_monarch` and :func:`fit_lowrank`: the range finder
    for the top ``k`` triplets of ``m x n`` matrices when it needs far fewer flops than an exact
    decomposition and the matrices are large enough for flops to dominate.

    The rule is on the ratio of the sketch width ``w = k + oversample`` to the short side
    ``min(m, n)``: the range finder reads ``A`` ``2 * niter + 2`` times with ``w`` columns, an
    exact SVD (or Gram eigendecomposition) costs at least ``~4 min(m, n)`` such columns, so it is
    taken when ``(niter + 1) * w <= min(m, n) / 4`` (a margin of about 4x for the range finder's
    QRs and its slower thin matmuls), and ``min(m, n) >= AUTO_MIN_SIZE`` (below, an exact SVD of
    the block takes milliseconds anyway and keeps the exact optimum). With the defaults
    (``oversample=20``, ``niter=4``) that is ``20 * (k + 20) <= min(m, n)``: blocks of 1024 and
    ranks up to 31 (MoRe's ``nblocks=4`` on a 4096-wide layer keeps 1 or 2), blocks of 512 and
    ranks up to 5, never blocks under 420.
    """
    short = min(m, n)
    w = sketch_width(k, m, n, oversample)
    return short >= AUTO_MIN_SIZE and w < short and 4 * (niter + 1) * w <= short


def randomized_svd(
    A: torch.Tensor,
    k: int,
    *,
    oversample: int = OVERSAMPLE,
    niter: int = NITER,
    seed: int | None = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Approximate top-``k`` singular triplets of ``A`` (``(..., m, n)``), batched over its leading dims.

    Args:
        A: ``(..., m, n)`` float32/float64 (or complex), any strides; read, never copied or written.
        k: triplets wanted, ``1 <= k <= min(m, n)``.
        oversample: extra test vectors beyond ``k`` (the sketch has ``min(k + oversample, m, n)``).
        niter: power iterations, each a pass with ``A^H`` and one with ``A``, re-orthonormalised.
        seed: the Gaussian test matrix comes from this seed and leaves the global RNG alone
            (:func:`structmat.approximation.seeded`); ``None`` draws from the global RNG.

    Returns:
        ``U`` ``(..., m, k)`` (orthonormal columns), ``S`` ``(..., k)`` (descending, >= 0),
        ``Vh`` ``(..., k, n)`` (orthonormal rows), with ``U diag(S) Vh`` the best rank-``k``
        approximation of ``A`` within the sampled range.
    """
    m, n = A.shape[-2:]
    if not 1 <= k <= min(m, n):
        raise ValueError(f"k must be in [1, min(m, n)={min(m, n)}], got {k}")
    check_sketch_args(oversample, niter, seed)
    w = sketch_width(k, m, n, oversample)
    with seeded(seed, A.device):
        omega = torch.randn(*A.shape[:-2], n, w, dtype=A.dtype, device=A.device)  # (..., n, w)
    Q = torch.linalg.qr(A @ omega).Q  # (..., m, w): an orthonormal basis of the sampled range
    del omega
    for _ in range(niter):
        Z = torch.linalg.qr(A.mH @ Q).Q  # (..., n, w)
        Q = torch.linalg.qr(A @ Z).Q  # (..., m, w)
    B = Q.mH @ A  # (..., w, n): A's rows in that basis
    Ub, S, Vh = torch.linalg.svd(B, full_matrices=False)  # (..., w, w), (..., w), (..., w, n)
    U = Q @ Ub[..., :k]  # (..., m, k)
    return U, S[..., :k], Vh[..., :k, :]
