"""Comparing a fine-tuning update ``ΔW`` with the weight ``W`` it was added to."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..checks import check_matrix, check_positive_int
from .spectra import effective_rank, singular_values, stable_rank


def principal_angles(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """Principal angles (radians, ascending, in [0, pi/2]) between the column spans of A and B.

    ``A`` (n, a), ``B`` (n, b): the columns are orthonormalised first (QR), then the angles are
    ``arccos`` of the singular values of ``Q_A^T Q_B`` (Bjorck & Golub); ``min(a, b)`` angles.
    """
    check_matrix("A", A)
    check_matrix("B", B)
    if A.shape[-2] != B.shape[-2]:
        raise ValueError(f"A and B must have the same number of rows, got {A.shape[-2]} and {B.shape[-2]}")
    qa, _ = torch.linalg.qr(A.detach())
    qb, _ = torch.linalg.qr(B.detach())
    cos = torch.linalg.svdvals(qa.mT @ qb).clamp(-1.0, 1.0)
    return torch.arccos(cos).flip(-1).sort(-1).values


@dataclass
class DeltaAnalysis:
    """Spectrum of ``ΔW`` and how it sits relative to ``W`` (one matrix pair)."""

    singular_values: torch.Tensor  # (min(m, n),) of ΔW, normalised by the largest
    effective_rank: float
    stable_rank: float
    left_angles: torch.Tensor  # (k,) principal angles between top-k left singular subspaces of ΔW and W
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
    W, delta = W.detach(), delta.detach()
    Ud, _, Vhd = torch.linalg.svd(delta, full_matrices=False)
    Uw, _, Vhw = torch.linalg.svd(W, full_matrices=False)
    Uk, Vk = Ud[:, :k], Vhd[:k].mT
    projected = torch.linalg.matrix_norm(Uk.mT @ W @ Vk)
    amp = torch.linalg.matrix_norm(delta) / projected if projected > 0 else torch.tensor(float("inf"))
    return DeltaAnalysis(
        singular_values=singular_values(delta),
        effective_rank=float(effective_rank(delta)),
        stable_rank=float(stable_rank(delta)),
        left_angles=principal_angles(Uk, Uw[:, :k]),
        right_angles=principal_angles(Vk, Vhw[:k].mT),
        amplification=float(amp),
        k=k,
    )
