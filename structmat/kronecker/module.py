"""``Kronecker``: a sum of ``rank`` Kronecker products ``A_k ⊗ B_k`` (the structure of LoKr, KronA).

``A_k`` is ``(m1, n1)`` and ``B_k`` is ``(m2, n2)``, so ``M`` is ``(m1*m2, n1*n2)``:
``M[i1*m2 + i2, j1*n2 + j2] = sum_k A[k, i1, j1] * B[k, i2, j2]``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..base import StructuredLinear
from ..checks import check_batch_shape, check_float_dtype, check_positive_int, check_useful_rank
from ..init import Init, init_factor_

Shape2 = tuple[int, int]


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def balanced_a_shape(out_features: int, in_features: int) -> Shape2:
    """The ``(m1, n1)`` that gives the most capacity per parameter: fewest parameters per term
    ``m1*n1 + m2*n2``, then the largest rank per term ``min(m1, n1) * min(m2, n2)``, then the
    smallest ``(m1, n1)`` (``(16, 16)`` for a 256x256 matrix: one term reaches full rank)."""
    check_positive_int("out_features", out_features)
    check_positive_int("in_features", in_features)

    def cost(shape: Shape2) -> tuple[int, int, Shape2]:
        (m1, n1), (m2, n2) = shape, (out_features // shape[0], in_features // shape[1])
        return m1 * n1 + m2 * n2, -min(m1, n1) * min(m2, n2), shape

    return min(((m1, n1) for m1 in _divisors(out_features) for n1 in _divisors(in_features)), key=cost)


def check_a_shape(a_shape: object, out_features: int, in_features: int) -> tuple[Shape2, Shape2]:
    """``(a_shape, b_shape)``: ``a_shape = (m1, n1)`` must divide ``(out_features, in_features)``;
    ``None`` is :func:`balanced_a_shape`. Errors name ``a_shape``."""
    if a_shape is None:
        a_shape = balanced_a_shape(out_features, in_features)
    if (
        not isinstance(a_shape, (tuple, list))
        or len(a_shape) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in a_shape)
    ):
        raise ValueError(f"a_shape must be a pair of positive integers (m1, n1), got {a_shape!r}")
    m1, n1 = a_shape
    if out_features % m1 or in_features % n1:
        raise ValueError(
            f"a_shape=({m1}, {n1}) must divide (out_features, in_features)=({out_features}, {in_features}): "
            f"A is (m1, n1) and B is (out_features / m1, in_features / n1)"
        )
    return (m1, n1), (out_features // m1, in_features // n1)


def check_kronecker_rank(rank: object, a_shape: Shape2, b_shape: Shape2) -> int:
    """``rank`` a positive integer and at most ``min(m1*n1, m2*n2)``, the rank of the rearranged
    matrix: that many terms already give every matrix of this shape (the one rule of
    :func:`structmat.checks.check_useful_rank`)."""
    check_positive_int("rank", rank)
    (m1, n1), (m2, n2) = a_shape, b_shape
    check_useful_rank(rank, min(m1 * n1, m2 * n2), f"a sum of Kronecker products with A ({m1}, {n1}), B ({m2}, {n2})")
    return rank


def kronecker_dense(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """``sum_k A_k ⊗ B_k``: ``A`` (*batch, rank, m1, n1), ``B`` (*batch, rank, m2, n2) ->
    (*batch, m1*m2, n1*n2)."""
    (m1, n1), (m2, n2) = A.shape[-2:], B.shape[-2:]
    dense = torch.einsum("...kac,...kbd->...abcd", A, B)  # (*batch, m1, m2, n1, n2)
    return dense.reshape(*dense.shape[:-4], m1 * m2, n1 * n2)


def kronecker_capacity(a_shape: Shape2, b_shape: Shape2, rank: int) -> int:
    """The rank of a generic sum of ``rank`` terms: ``rank(A ⊗ B) = rank(A) rank(B)``, so at most
    ``rank * min(m1, n1) * min(m2, n2)``, and at most ``min(out, in)``; a random instance reaches
    it (checked against ``matrix_rank`` in tests)."""
    (m1, n1), (m2, n2) = a_shape, b_shape
    return min(m1 * m2, n1 * n2, rank * min(m1, n1) * min(m2, n2))


class Kronecker(StructuredLinear):
    """``M = sum_k A_k ⊗ B_k`` (``out_features = m1*m2``, ``in_features = n1*n2``); ``forward(x) = x @ M.T``.

    Parameters ``A`` of shape ``(*batch_shape, rank, m1, n1)`` and ``B`` of shape
    ``(*batch_shape, rank, m2, n2)``; ``num_params = rank * (m1*n1 + m2*n2)``. The forward views
    ``x`` as ``(..., n1, n2)`` and applies ``B`` then ``A`` (never the dense ``M``): cost
    ``rank * n1 * m2 * (n2 + m1)`` per row of ``x``.

    Args:
        in_features, out_features: the size of ``M``.
        a_shape: ``(m1, n1)``, dividing ``(out_features, in_features)``; default
            :func:`balanced_a_shape` (the most capacity per parameter).
        rank: number of terms, at most ``min(m1*n1, m2*n2)`` (more adds no capacity).
        init_A, init_B: ``"kaiming"`` (uniform, bound ``1/sqrt(factor width)``) or ``"zeros"``;
            a LoKr-like adapter starts from ``init_B="zeros"``.
        batch_shape: leading dims for a stack of independent matrices.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        a_shape: Shape2 | None = None,
        rank: int = 1,
        *,
        init_A: Init = "kaiming",
        init_B: Init = "kaiming",
        batch_shape: tuple[int, ...] = (),
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        check_positive_int("in_features", in_features)
        check_positive_int("out_features", out_features)
        a_shape, b_shape = check_a_shape(a_shape, out_features, in_features)
        check_kronecker_rank(rank, a_shape, b_shape)
        batch_shape = check_batch_shape("batch_shape", batch_shape)
        dtype = dtype if dtype is not None else torch.get_default_dtype()
        check_float_dtype("dtype", dtype)
        A = torch.empty(*batch_shape, rank, *a_shape, device=device, dtype=dtype)
        B = torch.empty(*batch_shape, rank, *b_shape, device=device, dtype=dtype)
        init_factor_(A, init_A, "init_A")
        init_factor_(B, init_B, "init_B")
        super().__init__(in_features, out_features, batch_shape)
        self.A = nn.Parameter(A)
        self.B = nn.Parameter(B)

    @classmethod
    def from_factors(cls, A: torch.Tensor, B: torch.Tensor) -> Kronecker:
        """A Kronecker with ``A`` (*batch, rank, m1, n1) and ``B`` (*batch, rank, m2, n2) as parameters."""
        for name, f in (("A", A), ("B", B)):
            if not isinstance(f, torch.Tensor) or f.dim() < 3:
                raise ValueError(f"{name} must be a tensor (*batch, rank, rows, cols) with at least 3 dims")
            check_float_dtype(name, f.dtype)
        if A.shape[:-2] != B.shape[:-2] or A.dtype != B.dtype:
            raise ValueError(
                f"A (*batch, rank, m1, n1) and B (*batch, rank, m2, n2) must share batch dims, rank and dtype: "
                f"A {tuple(A.shape)} {A.dtype}, B {tuple(B.shape)} {B.dtype}"
            )
        self = cls.__new__(cls)
        StructuredLinear.__init__(self, A.shape[-1] * B.shape[-1], A.shape[-2] * B.shape[-2], A.shape[:-3])
        self.A = nn.Parameter(A)
        self.B = nn.Parameter(B)
        return self

    @property
    def rank(self) -> int:
        return self.A.shape[-3]

    @property
    def a_shape(self) -> Shape2:
        return tuple(self.A.shape[-2:])

    @property
    def b_shape(self) -> Shape2:
        return tuple(self.B.shape[-2:])

    @property
    def max_rank(self) -> int:
        return kronecker_capacity(self.a_shape, self.b_shape, self.rank)

    def _matmul(self, x: torch.Tensor) -> torch.Tensor:
        (m1, n1), (m2, n2) = self.a_shape, self.b_shape
        A, B = self.A, self.B  # (*batch, rank, m1, n1), (*batch, rank, m2, n2)
        if x.is_complex() and not A.is_complex():  # a real map on both parts of complex x
            A, B = A.to(x.dtype), B.to(x.dtype)
        if self.batch_shape:  # x is (*batch, n, in): the factors broadcast over its token dim
            A, B = A.unsqueeze(-4), B.unsqueeze(-4)
        xs = x.reshape(*x.shape[:-1], n1, n2)  # (..., n1, n2)
        t = torch.einsum("...jb,...kib->...kji", xs, B)  # (..., rank, n1, m2)
        y = torch.einsum("...kaj,...kji->...ai", A, t)  # (..., m1, m2)
        return y.reshape(*x.shape[:-1], m1 * m2)

    def to_dense(self) -> torch.Tensor:
        return kronecker_dense(self.A, self.B)

    def _structure_repr(self) -> str:
        return f"a_shape={self.a_shape}, b_shape={self.b_shape}, rank={self.rank}"


def kronecker_num_params(a_shape: Shape2, b_shape: Shape2, rank: int) -> int:
    """``rank * (m1*n1 + m2*n2)``."""
    return rank * (math.prod(a_shape) + math.prod(b_shape))
