"""Singular-value spectra and rank measures of a matrix or a stack ``(..., m, n)``.

All of them work at any scale and for float16/bfloat16 input: the singular values are computed
on ``W / max|W|`` in float32 at least, and results come back in ``W``'s (real) dtype.
"""

from __future__ import annotations

import torch

from ..approximation import normalized
from ..checks import check_bool, check_matrix


def _scaled_svdvals(W: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Singular values of ``W / s`` (descending, compute dtype) and ``s = max|W|`` (..., 1, 1)."""
    check_matrix("W", W, allow_complex=True)
    Wn, scale = normalized(W)
    return torch.linalg.svdvals(Wn), scale


def _out_dtype(W: torch.Tensor) -> torch.dtype:
    return W.real.dtype if W.is_complex() else W.dtype


def singular_values(W: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """Singular values, descending, ``(..., min(m, n))`` in ``W``'s real dtype; ``normalize``
    divides by the largest (all zeros for a zero matrix)."""
    check_bool("normalize", normalize)
    sv, scale = _scaled_svdvals(W)
    if normalize:
        top = sv[..., :1]
        sv = sv / torch.where(top > 0, top, torch.ones_like(top))
    else:
        sv = sv * scale.squeeze(-1)
    return sv.to(_out_dtype(W))


def effective_rank(W: torch.Tensor) -> torch.Tensor:
    """Roy & Vetterli (2007): ``exp(H(p))`` with ``p_i = sigma_i / sum_j sigma_j``.

    Between 1 (rank one) and ``min(m, n)`` (all singular values equal); 0 for a zero matrix.
    """
    sv, _ = _scaled_svdvals(W)  # scale-free: p does not depend on it
    total = sv.sum(-1, keepdim=True)
    p = sv / torch.where(total > 0, total, torch.ones_like(total))
    entropy = -(p * torch.log(torch.where(p > 0, p, torch.ones_like(p)))).sum(-1)
    return torch.where(total.squeeze(-1) > 0, entropy.exp(), torch.zeros_like(entropy)).to(_out_dtype(W))


def stable_rank(W: torch.Tensor) -> torch.Tensor:
    """``||W||_F^2 / ||W||_2^2`` (between 1 and the rank; 0 for a zero matrix)."""
    sv, _ = _scaled_svdvals(W)
    top = sv[..., 0]
    ratio = sv.square().sum(-1) / torch.where(top > 0, top, torch.ones_like(top)).square()
    return torch.where(top > 0, ratio, torch.zeros_like(top)).to(_out_dtype(W))


def numerical_rank(W: torch.Tensor, rtol: float | None = None) -> torch.Tensor:
    """The number of singular values above ``rtol * sigma_max`` (``torch.linalg.matrix_rank``);
    the default ``rtol`` is ``eps * max(m, n)`` of ``W``'s own dtype (float16's eps for float16
    ``W``, although the values are computed in float32)."""
    check_matrix("W", W, allow_complex=True)
    if rtol is not None and (isinstance(rtol, bool) or not isinstance(rtol, (int, float)) or not 0 <= rtol < 1):
        raise ValueError(f"rtol must be a number in [0, 1) or None, got {rtol!r}")
    if rtol is None:
        rtol = torch.finfo(_out_dtype(W)).eps * max(W.shape[-2:])
    Wn, _ = normalized(W)
    return torch.linalg.matrix_rank(Wn, rtol=rtol)
