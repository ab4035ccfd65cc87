"""Every structure through the shared ``StructuredLinearTestCase``, against independent dense
references (tests/helpers.py), and the proof that the case catches a wrong structure."""

import pytest
import torch
from helpers import butterfly_dense_reference, lowrank_dense_reference, monarch_dense_reference

from structmat import Butterfly, LowRank, Monarch
from structmat.testing import StructuredLinearTestCase


class MonarchCase(StructuredLinearTestCase):
    def reference_dense(self, op):
        return monarch_dense_reference(op)

    def expected_num_params(self, op):
        st = op.structure
        return int(op.batch_shape.numel()) * (st.k * st.q * st.p + st.l * st.s * st.r)


class TestMonarchSquare(MonarchCase):
    def make(self, dtype):
        return Monarch(16, 16, nblocks=4, rank=2, dtype=dtype)


class TestMonarchHalfPrecision(MonarchCase):
    dtypes = (torch.float16, torch.bfloat16)  # a subclass's own dtypes, half precision included

    def make(self, dtype):
        return Monarch(16, 16, nblocks=4, rank=2, dtype=dtype)


class TestMonarchRectangularPadded(MonarchCase):
    def make(self, dtype):
        return Monarch(21, 30, nblocks=4, rank=3, dtype=dtype)


class TestMonarchGeneralFactors(MonarchCase):
    def make(self, dtype):  # k=3, q=4, p=5; l=2, s=7, r=6 (l*r == k*q)
        return Monarch.from_factors(torch.randn(3, 4, 5, dtype=dtype), torch.randn(2, 7, 6, dtype=dtype))


class TestMonarchComplexFactors(MonarchCase):
    def make(self, dtype):  # complex factors, k != l, padded and cropped; real inputs taken as complex
        cdtype = dtype.to_complex()
        return Monarch.from_factors(torch.randn(3, 4, 5, dtype=cdtype), torch.randn(2, 7, 6, dtype=cdtype), 13, 12)


class TestMonarchBatched(MonarchCase):
    dtypes = (torch.float64,)  # a subclass picks its own dtypes

    def make(self, dtype):
        return Monarch(12, 8, nblocks=2, rank=2, batch_shape=(3,), dtype=dtype)


class LowRankCase(StructuredLinearTestCase):
    def reference_dense(self, op):
        return lowrank_dense_reference(op)

    def expected_num_params(self, op):
        return int(op.batch_shape.numel()) * op.rank * (op.in_features + op.out_features)


class TestLowRank(LowRankCase):
    def make(self, dtype):
        return LowRank(10, 7, rank=3, dtype=dtype)


class TestLowRankBatched(LowRankCase):
    def make(self, dtype):
        return LowRank(6, 9, rank=2, batch_shape=(2, 2), dtype=dtype)


class ButterflyCase(StructuredLinearTestCase):
    def reference_dense(self, op):
        return butterfly_dense_reference(op)

    def expected_num_params(self, op):
        m = op.n.bit_length() - 1
        logits = sum(3 * (m - 1) for side in ("in", "out") if getattr(op, f"{side}_relaxed") is not None)
        return int(op.batch_shape.numel()) * (op.nblocks * 2 * op.n * m + logits)


class TestButterfly(ButterflyCase):
    def make(self, dtype):
        return Butterfly(16, dtype=dtype)


class TestButterflyPaddedDecreasing(ButterflyCase):
    def make(self, dtype):
        return Butterfly(11, 6, increasing_stride=False, init="randn", dtype=dtype)


class TestButterflyBatched(ButterflyCase):
    dtypes = (torch.float64,)

    def make(self, dtype):
        return Butterfly(8, 6, batch_shape=(2, 3), dtype=dtype)


class TestButterflyComplexBitReversal(ButterflyCase):
    def make(self, dtype):
        return Butterfly(8, complex=True, bit_reversal=True, dtype=dtype)


class TestButterflyKaleidoscopePermuted(ButterflyCase):
    def make(self, dtype):  # B B* with a different pair of index permutations per batch element
        g = torch.Generator().manual_seed(0)
        perms = torch.stack([torch.randperm(16, generator=g) for _ in range(2)])
        return Butterfly(
            12, 16, nblocks=2, increasing_stride=False, in_perm=perms, out_perm=perms.flip(0), batch_shape=(2,),
            init="randn", dtype=dtype,
        )  # fmt: skip


class TestButterflyLearnedPermutations(ButterflyCase):
    def make(self, dtype):  # relaxed permutations at a vertex (saturated): equal to their rounding
        bf = Butterfly(16, in_perm="learn", out_perm="learn", init="randn", dtype=dtype)
        with torch.no_grad():
            for relaxed in (bf.in_relaxed, bf.out_relaxed):
                relaxed.logits.copy_(torch.randn(relaxed.logits.shape).sign() * 40)
        return bf


class TestButterflyComplexRealOutput(ButterflyCase):
    def make(self, dtype):
        return Butterfly(8, complex=True, real_output=True, nblocks=2, init="randn", dtype=dtype)


@pytest.mark.parametrize(
    "make,reference",
    [
        (lambda: LowRank(9, 5, 2), lowrank_dense_reference),
        (lambda: Butterfly(6, 8), butterfly_dense_reference),
        (lambda: Monarch(12, 20, 4, 3, batch_shape=(2,)), monarch_dense_reference),
        (lambda: Monarch(10, 7, 3, 2), monarch_dense_reference),  # padded: the add is not fused
    ],
)
def test_addmm_is_y_plus_forward_in_the_dtype_of_y(make, reference):
    op = make()
    x = torch.randn(*op.batch_shape, 3, op.in_features)
    y = torch.randn(*op.batch_shape, 3, op.out_features, dtype=torch.float64)
    out = op.addmm(y, x)
    assert out.dtype == torch.float64  # y's dtype, as an adapter's base output
    dense = reference(op).to(torch.complex128 if op.dtype.is_complex else torch.float64)
    torch.testing.assert_close(out, y + (x.double().to(dense.dtype) @ dense.mT).real, rtol=1e-5, atol=1e-5)


# -- the case can fail ----------------------------------------------------------------------


class BlockMajorOutputMonarch(Monarch):
    """A wrong Monarch: its outputs come out block-major (``d*s + e``) instead of interleaved
    (``e*l + d``). Its ``to_dense()`` is computed by the same wrong forward, so the two agree."""

    def _matmul(self, x, add=None):
        y = super()._matmul(x)
        st = self.structure
        return y.reshape(*y.shape[:-1], st.s, st.l).transpose(-1, -2).reshape(y.shape)


def test_case_catches_a_wrong_permutation():
    torch.manual_seed(0)
    wrong = BlockMajorOutputMonarch(16, 16, nblocks=4, rank=2, dtype=torch.float64)
    x = torch.randn(3, 16, dtype=torch.float64)
    torch.testing.assert_close(wrong(x), x @ wrong.to_dense().T)  # what the old self-check compared: passes
    case = TestMonarchSquare()
    with pytest.raises(AssertionError):
        case.test_forward_equals_reference(wrong)
    with pytest.raises(AssertionError):
        case.test_to_dense_equals_reference(wrong)


def test_subclass_dtypes_are_used(pytester):
    pytester.makepyfile(
        """
        import torch
        from structmat import LowRank
        from structmat.testing import StructuredLinearTestCase

        class TestOnlyDouble(StructuredLinearTestCase):
            dtypes = (torch.float64,)

            def make(self, dtype):
                return LowRank(4, 3, 2, dtype=dtype)

            def reference_dense(self, op):
                return op.B.detach() @ op.A.detach()

            def test_dtype_seen(self, op):
                assert op.dtype == torch.float64
        """
    )
    result = pytester.runpytest("-q", "-k", "dtype_seen or forward")
    result.assert_outcomes(passed=2)


def test_public_api_is_documented():
    import structmat
    import structmat.adapters
    import structmat.analysis
    import structmat.monarch

    for module in (structmat, structmat.adapters, structmat.analysis, structmat.monarch):
        for name in module.__all__:
            assert getattr(module, name).__doc__, f"{module.__name__}.{name} has no docstring"
