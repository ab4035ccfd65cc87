"""Hypothesis property tests of ``Monarch`` against the entrywise formula (tests/helpers.py)."""

import torch
from helpers import entrywise_monarch, monarch_dense_reference
from hypothesis import assume, given
from hypothesis import strategies as st

from structmat import Monarch

dtypes = st.sampled_from([torch.float32, torch.float64])
lead_dims = st.lists(st.integers(1, 3), min_size=0, max_size=2)


def close(a, b, dtype):
    tol = 1e-10 if dtype == torch.float64 else 2e-4
    torch.testing.assert_close(a, b.to(a.dtype), rtol=tol, atol=tol * max(1.0, float(b.detach().abs().max())))


@st.composite
def monarch_args(draw, divisible=False):
    nblocks = draw(st.integers(1, 6))
    if divisible:
        in_f = nblocks * draw(st.integers(1, 8))
        out_f = nblocks * draw(st.integers(1, 8))
    else:
        in_f = draw(st.integers(nblocks, 40))
        out_f = draw(st.integers(nblocks, 40))
        p = -(-in_f // nblocks)
        assume((nblocks - 1) * p < in_f)  # else refused, tested in test_errors
    rank = draw(st.integers(1, min(in_f, out_f, 10)))
    return in_f, out_f, nblocks, rank


@given(monarch_args(), lead_dims, dtypes)
def test_monarch_forward_equals_entrywise_formula(args, lead, dtype):
    in_f, out_f, nblocks, rank = args
    m = Monarch(in_f, out_f, nblocks, rank, dtype=dtype)
    x = torch.randn(*lead, in_f, dtype=dtype)
    y = m(x)
    assert y.shape == (*lead, out_f) and y.dtype == dtype
    reference = monarch_dense_reference(m)
    close(y, x @ reference.T, dtype)
    close(m.to_dense(), reference, dtype)


@given(monarch_args())
def test_monarch_rank_equals_capacity(args):
    """The rank of a random instance (from the entrywise formula) is the max-flow capacity."""
    in_f, out_f, nblocks, rank = args
    m = Monarch(in_f, out_f, nblocks, rank, dtype=torch.float64)
    assert torch.linalg.matrix_rank(monarch_dense_reference(m)) == m.max_rank


@given(monarch_args(divisible=True))
def test_monarch_random_reaches_min_nblocks_rank(args):
    in_f, out_f, nblocks, rank = args
    m = Monarch(in_f, out_f, nblocks, rank, dtype=torch.float64)
    expected = min(nblocks * rank, in_f, out_f)
    assert m.max_rank == expected
    assert torch.linalg.matrix_rank(monarch_dense_reference(m)) == expected


@given(monarch_args())
def test_monarch_num_params(args):
    in_f, out_f, nblocks, rank = args
    m = Monarch(in_f, out_f, nblocks, rank)
    p, s = -(-in_f // nblocks), -(-out_f // nblocks)
    assert m.num_params == nblocks * rank * (p + s)
    if in_f % nblocks == 0 and out_f % nblocks == 0:
        assert m.num_params == rank * (in_f + out_f)


@given(st.integers(1, 4), st.integers(1, 4), st.integers(1, 5), st.integers(1, 4), st.integers(1, 5), dtypes)
def test_monarch_general_factors_forward(k, q, p, l, s, dtype):
    assume((k * q) % l == 0)
    r = k * q // l
    b1, b2 = torch.randn(k, q, p, dtype=dtype), torch.randn(l, s, r, dtype=dtype)
    m = Monarch.from_factors(b1, b2)
    x = torch.randn(3, k * p, dtype=dtype)
    reference = entrywise_monarch(b1, b2)
    close(m(x), x @ reference.T, dtype)
    assert torch.linalg.matrix_rank(reference) == m.max_rank


@given(monarch_args(), st.integers(1, 3), dtypes)
def test_monarch_batched_matches_each(args, b, dtype):
    in_f, out_f, nblocks, rank = args
    m = Monarch(in_f, out_f, nblocks, rank, batch_shape=(b,), dtype=dtype)
    x = torch.randn(b, 4, in_f, dtype=dtype)
    reference = monarch_dense_reference(m)
    assert m.to_dense().shape == (b, out_f, in_f)
    close(m(x), x @ reference.mT, dtype)
