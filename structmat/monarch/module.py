"""``Monarch``: block-diagonal x permutation x block-diagonal, with rank-r blocks (MoRe)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..base import StructuredLinear
from ..checks import check_batch_shape, check_float_dtype
from ..init import Init, init_factor_
from .multiply import monarch_multiply
from .structure import Layout, MonarchShape


class Monarch(StructuredLinear):
    """A Monarch matrix ``M`` (out_features, in_features); ``forward(x) = x @ M.T``.

    MoRe parameterization (Tan et al. 2024): ``nblocks`` blocks on each side, block rank
    ``rank``. Parameters::

        blkdiag1: (nblocks, rank, ceil(in_features / nblocks))   # input side
        blkdiag2: (nblocks, ceil(out_features / nblocks), rank)  # output side

    ``num_params == rank * (in_features + out_features)`` when ``nblocks`` divides both sizes
    (LoRA's count at the same rank), while the rank can reach ``min(nblocks*rank, in, out)``.
    ``nblocks == 1`` is exactly low rank ``B @ A``. The classic square Monarch of Dao et al.
    is ``nblocks = sqrt(n)``, ``rank = n // nblocks``.

    Sizes not divisible by ``nblocks`` are zero-padded on the input and cropped on the output
    (as the MoRe reference code does); an ``nblocks`` that would leave a block with only
    padding is refused.

    Args:
        in_features, out_features: the logical size of ``M``.
        nblocks: number of diagonal blocks of each factor.
        rank: rows of each ``blkdiag1`` block = columns of each ``blkdiag2`` block.
        init1, init2: ``"kaiming"`` (uniform, bound ``1/sqrt(block width)``, like
            ``nn.Linear``) or ``"zeros"``. The MoRe adapter uses ``init2="zeros"`` so the
            update starts at zero.
        batch_shape: leading dims for a stack of independent Monarch matrices.
        layout: ``"structmat"`` (output blocks ``ceil(out/nblocks)``) or ``"reference"`` (the MoRe
            reference code's ``ceil(ceil(in/nblocks) * out / in)``, to load its checkpoints);
            the same when ``nblocks`` divides both sizes. See :meth:`MonarchShape.for_more`.
    """

    recompute_middle: bool = False  # keep only x for backward (see monarch_multiply); adapters turn it on

    def __init__(
        self,
        in_features: int,
        out_features: int,
        nblocks: int = 4,
        rank: int = 1,
        *,
        init1: Init = "kaiming",
        init2: Init = "kaiming",
        batch_shape: tuple[int, ...] = (),
        layout: Layout = "structmat",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        structure = MonarchShape.for_more(in_features, out_features, nblocks, rank, layout)
        batch_shape = check_batch_shape("batch_shape", batch_shape)
        dtype = dtype if dtype is not None else torch.get_default_dtype()
        check_float_dtype("dtype", dtype)
        kw = {"device": device, "dtype": dtype}
        blkdiag1 = torch.empty(*batch_shape, nblocks, rank, structure.p, **kw)
        blkdiag2 = torch.empty(*batch_shape, nblocks, structure.s, rank, **kw)
        init_factor_(blkdiag1, init1, "init1")
        init_factor_(blkdiag2, init2, "init2")
        super().__init__(in_features, out_features, batch_shape)
        self.blkdiag1 = nn.Parameter(blkdiag1)
        self.blkdiag2 = nn.Parameter(blkdiag2)
        self.structure = structure

    @classmethod
    def from_factors(
        cls,
        blkdiag1: torch.Tensor,  # (*batch, k, q, p)
        blkdiag2: torch.Tensor,  # (*batch, l, s, r)
        in_features: int | None = None,
        out_features: int | None = None,
    ) -> Monarch:
        """A Monarch with the given factors (general shapes ``(k, q, p)`` / ``(l, s, r)``).

        Requires ``l * r == k * q``. ``in_features`` defaults to ``k*p`` and
        ``out_features`` to ``l*s``; smaller values mean pad-and-crop. The tensors are used
        as the parameters' data (no copy), with their dtype and device. Complex factors
        (complex64/complex128) make a complex ``M`` (e.g. :func:`~structmat.dft_monarch`): real
        inputs are then taken as complex, and the multiply runs on the paths that support
        complex numbers (see :mod:`structmat.monarch.dispatch`).
        """
        for name, f in (("blkdiag1", blkdiag1), ("blkdiag2", blkdiag2)):
            if not isinstance(f, torch.Tensor) or f.dim() < 3:
                raise ValueError(f"{name} must be a tensor of shape (..., blocks, rows, cols)")
            check_float_dtype(name, f.dtype, allow_complex=True)
        if blkdiag1.shape[:-3] != blkdiag2.shape[:-3]:
            raise ValueError(
                f"blkdiag1 and blkdiag2 must share batch dims, got {tuple(blkdiag1.shape[:-3])} "
                f"and {tuple(blkdiag2.shape[:-3])}"
            )
        if blkdiag1.dtype != blkdiag2.dtype or blkdiag1.device != blkdiag2.device:
            raise ValueError("blkdiag1 and blkdiag2 must have the same dtype and device")
        k, q, p = blkdiag1.shape[-3:]
        l, s, r = blkdiag2.shape[-3:]
        in_features = k * p if in_features is None else in_features
        out_features = l * s if out_features is None else out_features
        structure = MonarchShape(k, q, p, l, s, r, in_features, out_features)
        self = cls.__new__(cls)
        StructuredLinear.__init__(self, in_features, out_features, blkdiag1.shape[:-3])
        self.blkdiag1 = nn.Parameter(blkdiag1)
        self.blkdiag2 = nn.Parameter(blkdiag2)
        self.structure = structure
        return self

    @property
    def nblocks(self) -> int:
        return self.structure.k

    @property
    def rank(self) -> int:
        return self.structure.q

    @property
    def max_rank(self) -> int:
        return self.structure.rank_capacity

    def _matmul(self, x: torch.Tensor, add: torch.Tensor | None = None) -> torch.Tensor:
        st = self.structure
        w1, w2 = self.blkdiag1, self.blkdiag2
        if x.is_complex() != w1.is_complex():  # real x on complex factors, or complex x on real ones
            dtype = torch.promote_types(x.dtype, w1.dtype)
            x, w1, w2 = x.to(dtype), w1.to(dtype), w2.to(dtype)
        pad_in = st.k * st.p - self.in_features
        if pad_in:
            x = F.pad(x, (0, pad_in))
        y = monarch_multiply(x, w1, w2, add=add, recompute_middle=self.recompute_middle)
        if y.shape[-1] != self.out_features:
            y = y[..., : self.out_features]
        return y

    def _addmm(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        # the multiply adds y in its last step, when y is what that step writes: no cropped
        # output rows, one dtype, the shape of forward(x)
        st = self.structure
        if (
            st.l * st.s == self.out_features
            and y.dtype == self.dtype
            and x.is_complex() == y.is_complex()
            and y.shape == (*x.shape[:-1], self.out_features)
        ):
            return self._matmul(x, add=y)
        return super()._addmm(y, x)

    def _structure_repr(self) -> str:
        st = self.structure
        return f"blkdiag1=({st.k}, {st.q}, {st.p}), blkdiag2=({st.l}, {st.s}, {st.r})"

    def monarch_factors(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Its own factors (not for a stack; the fused path checks the padding itself)."""
        return None if self.batch_shape else (self.blkdiag1, self.blkdiag2)
