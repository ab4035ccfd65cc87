"""``LowRank``: ``M = B @ A`` with ``A`` (rank, in) and ``B`` (out, rank), as in LoRA."""

from __future__ import annotations

import torch
from torch import nn

from ..base import StructuredLinear
from ..checks import check_batch_shape, check_float_dtype, check_positive_int, check_useful_rank
from ..init import Init, init_factor_


class LowRank(StructuredLinear):
    """A rank-``rank`` matrix ``M = B @ A``; ``forward(x) = x @ A.T @ B.T``.

    Parameters ``A`` of shape ``(*batch_shape, rank, in_features)`` and ``B`` of shape
    ``(*batch_shape, out_features, rank)``; ``num_params = rank * (in + out)``.
    ``init_A``/``init_B`` are ``"kaiming"`` (like ``nn.Linear``) or ``"zeros"``; LoRA's
    adapter init is ``init_B="zeros"``.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        rank: int,
        *,
        init_A: Init = "kaiming",
        init_B: Init = "kaiming",
        batch_shape: tuple[int, ...] = (),
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        check_positive_int("in_features", in_features)
        check_positive_int("out_features", out_features)
        check_positive_int("rank", rank)
        check_useful_rank(rank, min(in_features, out_features), f"a low-rank ({out_features}, {in_features}) matrix")
        batch_shape = check_batch_shape("batch_shape", batch_shape)
        dtype = dtype if dtype is not None else torch.get_default_dtype()
        check_float_dtype("dtype", dtype)
        A = torch.empty(*batch_shape, rank, in_features, device=device, dtype=dtype)
        B = torch.empty(*batch_shape, out_features, rank, device=device, dtype=dtype)
        init_factor_(A, init_A, "init_A")
        init_factor_(B, init_B, "init_B")
        super().__init__(in_features, out_features, batch_shape)
        self.A = nn.Parameter(A)
        self.B = nn.Parameter(B)

    @classmethod
    def from_factors(cls, A: torch.Tensor, B: torch.Tensor) -> LowRank:
        """A LowRank with ``A`` (*batch, rank, in) and ``B`` (*batch, out, rank) as parameters."""
        for name, f in (("A", A), ("B", B)):
            if not isinstance(f, torch.Tensor) or f.dim() < 2:
                raise ValueError(f"{name} must be a tensor with at least 2 dims")
            check_float_dtype(name, f.dtype)
        if A.shape[:-2] != B.shape[:-2] or A.shape[-2] != B.shape[-1]:
            raise ValueError(
                f"A (*batch, rank, in) and B (*batch, out, rank) do not match: A {tuple(A.shape)}, B {tuple(B.shape)}"
            )
        self = cls.__new__(cls)
        StructuredLinear.__init__(self, A.shape[-1], B.shape[-2], A.shape[:-2])
        self.A = nn.Parameter(A)
        self.B = nn.Parameter(B)
        return self

    @property
    def rank(self) -> int:
        return self.A.shape[-2]

    @property
    def max_rank(self) -> int:
        return min(self.rank, self.in_features, self.out_features)

    def _matmul(self, x: torch.Tensor) -> torch.Tensor:
        # B.mT made contiguous (a small (rank, out) copy): autograd then computes B's gradient
        # as h.T @ grad_y, not grad_y.T @ h, which MKL runs several times slower for small ranks.
        return (x @ self.A.mT) @ self.B.mT.contiguous()

    def to_dense(self) -> torch.Tensor:
        return self.B @ self.A

    def _structure_repr(self) -> str:
        return f"rank={self.rank}"

    def monarch_factors(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``B @ A`` is a Monarch matrix with one block: ``(A[None], B[None])``."""
        return None if self.batch_shape else (self.A.unsqueeze(0), self.B.unsqueeze(0))
