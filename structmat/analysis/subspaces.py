"""Comparing a fine-tuning update ``ΔW`` with the weight ``W`` it was added to."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..approximation import compute_dtype, normalized
from ..checks import check_matrix, check_positive_int
from .spectra import effective_rank, singular_values, stable_rank


def _column_basis(name: str, A: torch.Tensor) -> torch.Tensor:
    """Orthonormal basis ``(n, r)`` of the column span of ``A``, ``r`` its numerical rank
    (singular values above ``eps * max(n, a) * sigma_max`` of ``A``'s dtype, as
    ``torch.linalg.matrix_rank``); computed on ``A / max|A|`` in float32 at least."""
    check_matrix(name, A)
    if A.dim() != 2:
        raise ValueError(f"{name} must be one matrix (n, columns), got shape {tuple(A.shape)}")
    An, _ = normalized(A)
    U, S, _ = torch.linalg.svd(An, full_matrices=False)
    tol = torch.finfo(A.dtype).eps * max(A.shape) * S[:1]
    rank = int((S > tol).sum()) if S.numel() else 0
    return U[:, :rank]


def principal_angles(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """Principal angles (radians, ascending, in [0, pi/2]) between the column spans of A and B.

    ``A`` (n, a), ``B`` (n, b): orthonormal bases of the spans are taken from SVDs, then the
    angles are ``arccos`` of the singular values of ``Q_A^T Q_B`` (Bjorck & Golub). There are
    ``min(rank A, rank B)`` angles (the numerical ranks): a rank-deficient ``A`` spans fewer
    directions than it has columns, and only directions that exist get an angle (none for a zero
    matrix). In ``A``'s dtype; float16/bfloat16 are computed in float32.
    """
    qa = _column_basis("A", A)
    qb = _column_basis("B", B)
    if A.shape[-2] != B.shape[-2]:
        raise ValueError(f"A and B must have the same number of rows, got {A.shape[-2]} and {B.shape[-2]}")
    if qa.shape[-1] == 0 or qb.shape[-1] == 0:
        return A.new_zeros(0)
    cos = torch.linalg.svdvals(qa.mT @ qb.to(qa.dtype)).clamp(-1.0, 1.0)
    return torch.arccos(cos).flip(-1).sort(-1).values.to(A.dtype)


@dataclass
class DeltaAnalysis:
    """Spectrum of ``ΔW`` and how it sits relative to ``W`` (one matrix pair)."""

    singular_values: torch.Tensor  # (min(m, n),) of ΔW, normalised by the largest
    effective_rank: float
    stable_rank: float
    left_angles: torch.Tensor  # (<= k,) principal angles between top-k left singular subspaces of ΔW and W
    right_angles: torch.Tensor  # (k,) same, right singular subspaces
    amplification: float  # ||ΔW||_F / ||U_k^T W V_k||_F (Hu et al. 2021, section 7)
    k: int


def delta_analysis(W: torch.Tensor, delta: torch.Tensor, k: int = 8) -> DeltaAnalysis:
    """Analyse a weight update ``delta`` (ΔW) against the base weight ``W``, both ``(m, n)``.

    The amplification factor of the LoRA paper: project ``W`` onto the top-``k`` singular
    subspaces of ``ΔW`` (``U_k^T W V_k``, with ``U_k``, ``V_k`` the top-k left/right singular
    vectors of ``ΔW``) and compare norms: a large factor means ``ΔW`` amplifies directions
    that ``W`` hardly uses.
    """
    check_matrix("W", W)
    check_matrix("delta", delta)
    check_positive_int("k", k)
    if W.shape != delta.shape or W.dim() != 2:
        raise ValueError(f"W and delta must be matrices of the same shape, got {tuple(W.shape)}, {tuple(delta.shape)}")
    if k > min(W.shape):
        raise ValueError(f"k={k} is larger than min(W.shape)={min(W.shape)}")
    dtype = W.dtype
    work = compute_dtype(torch.promote_types(W.dtype, delta.dtype))
    W, w_scale = normalized(W.to(work))  # any scale: norms of W / max|W| neither overflow nor underflow
    delta, d_scale = normalized(delta.to(work))
    Ud, _, Vhd = torch.linalg.svd(delta, full_matrices=False)
    Uw, _, Vhw = torch.linalg.svd(W, full_matrices=False)
    Uk, Vk = Ud[:, :k], Vhd[:k].mT
    projected = torch.linalg.matrix_norm(Uk.mT @ W @ Vk)
    ratio = float(d_scale) / float(w_scale)  # python floats (float64): the scales' ratio may be huge
    amp = float(torch.linalg.matrix_norm(delta)) * ratio / float(projected) if projected > 0 else float("inf")
    return DeltaAnalysis(
        singular_values=singular_values(delta).to(dtype),
        effective_rank=float(effective_rank(delta)),
        stable_rank=float(stable_rank(delta)),
        left_angles=principal_angles(Uk, Uw[:, :k]).to(dtype),
        right_angles=principal_angles(Vk, Vhw[:k].mT).to(dtype),
        amplification=float(amp),
        k=k,
    )
