"""``fit_kronecker``: the closest sum of ``rank`` Kronecker products to ``W`` in Frobenius norm.

Van Loan & Pitsianis (1993): the rearrangement ``R(W)[i1*n1 + j1, i2*n2 + j2] =
W[i1*m2 + i2, j1*n2 + j2]`` maps ``A ⊗ B`` to ``vec(A) vec(B)^T`` and keeps the Frobenius norm,
so ``||W - sum_k A_k ⊗ B_k||_F = ||R(W) - sum_k vec(A_k) vec(B_k)^T||_F``: the optimum is the
truncated SVD of ``R(W)`` (Eckart-Young), and its error comes from the singular values of
``R(W)`` alone.
"""

from __future__ import annotations

import torch

from ..approximation import normalized, relative_error
from ..checks import check_matrix
from .module import Kronecker, Shape2, check_a_shape, check_kronecker_rank, kronecker_dense


def rearrange(W: torch.Tensor, a_shape: Shape2) -> torch.Tensor:
    """``R(W)``: ``W`` (..., m1*m2, n1*n2) -> (..., m1*n1, m2*n2), entry ``[i1*n1 + j1, i2*n2 + j2]``
    is ``W[i1*m2 + i2, j1*n2 + j2]``."""
    (m1, n1), (out_f, in_f) = a_shape, W.shape[-2:]
    m2, n2 = out_f // m1, in_f // n1
    blocks = W.reshape(*W.shape[:-2], m1, m2, n1, n2).transpose(-3, -2)  # (..., m1, n1, m2, n2)
    return blocks.reshape(*W.shape[:-2], m1 * n1, m2 * n2)


def _checked(W: torch.Tensor, a_shape: object, rank: object, allow_complex: bool) -> tuple[Shape2, Shape2]:
    check_matrix("W", W, allow_complex=allow_complex)
    out_f, in_f = W.shape[-2:]
    a, b = check_a_shape(a_shape, out_f, in_f)
    check_kronecker_rank(rank, a, b)
    return a, b


def fit_kronecker(W: torch.Tensor, a_shape: Shape2 | None = None, rank: int = 1) -> Kronecker:
    """The closest ``sum_{k < rank} A_k ⊗ B_k`` to ``W`` in Frobenius norm (closed form, optimal).

    Args:
        W: ``(..., out, in)``, one matrix or a stack; real float dtype, finite. Not modified.
        a_shape: ``(m1, n1)`` of the ``A`` factors, dividing ``(out, in)``; ``B`` is
            ``(out / m1, in / n1)``. Default: :func:`~structmat.kronecker.balanced_a_shape`.
        rank: number of terms, at most ``min(m1*n1, m2*n2)`` (the rank of the rearranged
            matrix; a larger rank adds no capacity and is refused).

    Returns:
        A :class:`Kronecker` with ``batch_shape = W.shape[:-2]``, on ``W``'s device and dtype:
        ``A_k = sqrt(s_k) reshape(u_k)``, ``B_k = sqrt(s_k) reshape(v_k)`` from the SVD of the
        rearranged ``W``. Its ``fit_error`` is the achieved ``||W - M||_F / ||W||_F`` (shape
        ``W.shape[:-2]``), measured on the returned factors.

    The SVD runs on ``W / max|W|`` (float32 for float16/bfloat16 ``W``) and the scale goes back
    into the factors (``sqrt`` on each side), so the relative error does not depend on the scale.
    """
    a, b = _checked(W, a_shape, rank, allow_complex=False)
    batch = W.shape[:-2]
    Wn, scale = normalized(W)  # (*batch, out, in) in the compute dtype, (*batch, 1, 1)
    with torch.no_grad():
        U, S, Vh = torch.linalg.svd(rearrange(Wn, a), full_matrices=False)  # (*batch, m1n1, q), (*batch, q), ...
        sq = S[..., :rank].sqrt()  # (*batch, rank)
        A = (U[..., :rank] * sq.unsqueeze(-2)).mT.reshape(*batch, rank, *a)  # (*batch, rank, m1, n1)
        B = (Vh[..., :rank, :] * sq.unsqueeze(-1)).reshape(*batch, rank, *b)  # (*batch, rank, m2, n2)
        root = scale.sqrt().unsqueeze(-1)  # (*batch, 1, 1, 1): half of the scale on each factor
        module = Kronecker.from_factors((A * root).to(W.dtype).contiguous(), (B * root).to(W.dtype).contiguous())
        # measured on the returned factors (rounded to W's dtype), brought back to W / scale
        back = kronecker_dense(module.A.to(Wn.dtype) / root, module.B.to(Wn.dtype) / root)
        module.fit_error = relative_error(Wn, back).to(W.dtype)
    return module


def kronecker_optimal_error(W: torch.Tensor, a_shape: Shape2 | None = None, rank: int = 1) -> torch.Tensor:
    """``sqrt(sum_{k >= rank} s_k^2) / ||W||_F`` with ``s`` the singular values of the rearranged
    ``W``: the optimum of :func:`fit_kronecker`, computed without fitting. Shape ``W.shape[:-2]``,
    ``W``'s real dtype (0 for a zero ``W``; ``W`` may be complex); scale-free (``W / max|W|``)."""
    a, _ = _checked(W, a_shape, rank, allow_complex=True)
    Wn, _ = normalized(W)
    with torch.no_grad():
        sv = torch.linalg.svdvals(rearrange(Wn, a))  # (*batch, min(m1n1, m2n2))
        total = sv.square().sum(-1)
        tail = sv[..., rank:].square().sum(-1)
        err = torch.where(total > 0, tail / torch.where(total > 0, total, torch.ones_like(total)), total).sqrt()
    return err.to(W.real.dtype if W.is_complex() else W.dtype)
