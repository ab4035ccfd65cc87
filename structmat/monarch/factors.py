"""The algebra of the two block-diagonal factors, shared by every multiply path.

Convention (docs/monarch-math.md, the one of the reference ``blockdiag_butterfly_multiply``):
``blkdiag1`` is ``(k, q, p)``, ``blkdiag2`` is ``(l, s, r)`` with ``l*r == k*q``. Split ``x``
into ``k`` chunks of ``p``, apply ``blkdiag1`` per chunk (the middle, ``k*q`` wide), re-read the
middle index ``j = a*q + b`` as ``j = c*l + d`` (block ``d`` of the second factor takes the
strided slice ``d, l+d, ...``), apply ``blkdiag2`` per block and interleave the outputs (output
``e*l + d`` from block ``d``). The permutations are reshapes and transposes, never matrices.
"""

from __future__ import annotations

import torch


def middle_width(blkdiag1: torch.Tensor) -> int:
    """The middle width ``k*q`` of ``blkdiag1`` (``(*batch, k, q, p)``): what picks the path."""
    return blkdiag1.shape[-3] * blkdiag1.shape[-2]


def expand_first(blkdiag1: torch.Tensor) -> torch.Tensor:  # (k, q, p) -> (k*q, k*p)
    """``R[a*q + b, a*p + i] = blkdiag1[a, b, i]``: the first factor as a block-diagonal matrix."""
    k, q, p = blkdiag1.shape
    return torch.diag_embed(blkdiag1.permute(1, 2, 0), dim1=0, dim2=2).reshape(k * q, k * p)


def expand_second(blkdiag2: torch.Tensor) -> torch.Tensor:  # (l, s, r) -> (r*l, l*s)
    """``Lt[c*l + d, e*l + d] = blkdiag2[d, e, c]``: the second factor with the middle and output
    permutations folded in, stored transposed (middle ``j = c*l + d`` feeds output ``e*l + d``)."""
    l, s, r = blkdiag2.shape
    return torch.diag_embed(blkdiag2.permute(2, 1, 0), dim1=1, dim2=3).reshape(r * l, s * l)


def expand_factors(
    blkdiag1: torch.Tensor,  # (k, q, p)
    blkdiag2: torch.Tensor,  # (l, s, r)
) -> tuple[torch.Tensor, torch.Tensor]:  # (k*q, k*p), (k*q, l*s)
    """``R`` and ``Lt`` with ``M = Lt.T @ R``, so ``y = (x @ R.T) @ Lt``.

    Both are ``(k*q, features)`` row-major: every product of the forward and backward then has
    its long dimension contiguous (MKL runs ``grad_y.T @ h`` with a narrow ``h`` up to 10x slower
    than ``h.T @ grad_y``, and autograd picks the former for a transposed view).
    """
    return expand_first(blkdiag1), expand_second(blkdiag2)


def first_factor_grad(
    grad_h: torch.Tensor,  # (n, k*q), the gradient of the middle x @ R.T
    x: torch.Tensor,  # (n, k*p)
    k: int,
) -> torch.Tensor:  # (k, q, p)
    """The gradient of ``blkdiag1``: one bmm over the blocks through strided views (no copies,
    ``k`` times fewer FLOPs than the block diagonal of ``grad_h.T @ x``)."""
    n, q, p = x.shape[0], grad_h.shape[1] // k, x.shape[1] // k
    return torch.bmm(grad_h.reshape(n, k, q).permute(1, 2, 0), x.reshape(n, k, p).transpose(0, 1))


def second_factor_grad(
    h: torch.Tensor,  # (n, r*l), the middle
    grad_y: torch.Tensor,  # (n, l*s)
    l: int,
) -> torch.Tensor:  # (l, s, r)
    """The gradient of ``blkdiag2``: the entries of ``dLt = h.T @ grad_y`` that ``Lt`` is made of
    (a block copy through the output permutation would cost a pass over ``grad_y``)."""
    r, s = h.shape[1] // l, grad_y.shape[1] // l
    return (h.T @ grad_y).reshape(r, l, s, l).diagonal(dim1=1, dim2=3).permute(2, 1, 0)


def middle_to_second(h: torch.Tensor, r: int, l: int) -> torch.Tensor:
    """(k, n, q) -> (l, n, r): the middle index ``j = a*q + b`` re-read as ``j = c*l + d``."""
    return h.transpose(0, 1).reshape(h.shape[1], r, l).permute(2, 0, 1)


def second_to_middle(g: torch.Tensor, k: int, q: int) -> torch.Tensor:
    """Inverse of :func:`middle_to_second`: (l, n, r) -> (k, n, q)."""
    return g.permute(1, 2, 0).reshape(g.shape[1], k, q).transpose(0, 1)
