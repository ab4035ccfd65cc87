"""Every structure through the shared StructuredLinearTestCase (forward vs dense, gradcheck...)."""

import torch

from structmat import Butterfly, LowRank, Monarch
from structmat.testing import StructuredLinearTestCase


class TestMonarchSquare(StructuredLinearTestCase):
    def make(self, dtype):
        return Monarch(16, 16, nblocks=4, rank=2, dtype=dtype)


class TestMonarchRectangularPadded(StructuredLinearTestCase):
    def make(self, dtype):
        return Monarch(21, 30, nblocks=4, rank=3, dtype=dtype)


class TestMonarchGeneralFactors(StructuredLinearTestCase):
    def make(self, dtype):  # k=3, q=4, p=5; l=2, s=7, r=6 (l*r == k*q)
        return Monarch.from_factors(torch.randn(3, 4, 5, dtype=dtype), torch.randn(2, 7, 6, dtype=dtype))


class TestMonarchBatched(StructuredLinearTestCase):
    def make(self, dtype):
        return Monarch(12, 8, nblocks=2, rank=2, batch_shape=(3,), dtype=dtype)


class TestLowRank(StructuredLinearTestCase):
    def make(self, dtype):
        return LowRank(10, 7, rank=3, dtype=dtype)


class TestLowRankBatched(StructuredLinearTestCase):
    def make(self, dtype):
        return LowRank(6, 9, rank=2, batch_shape=(2, 2), dtype=dtype)


class TestButterfly(StructuredLinearTestCase):
    def make(self, dtype):
        return Butterfly(16, dtype=dtype)


class TestButterflyPaddedDecreasing(StructuredLinearTestCase):
    def make(self, dtype):
        return Butterfly(11, 6, increasing_stride=False, init="randn", dtype=dtype)


class TestButterflyComplexBitReversal(StructuredLinearTestCase):
    def make(self, dtype):
        return Butterfly(8, complex=True, bit_reversal=True, dtype=dtype)


def test_public_api_is_documented():
    import structmat
    import structmat.adapters
    import structmat.analysis
    import structmat.finetune

    for module in (structmat, structmat.adapters, structmat.analysis, structmat.finetune):
        for name in module.__all__:
            assert getattr(module, name).__doc__, f"{module.__name__}.{name} has no docstring"
