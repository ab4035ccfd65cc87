"""Hypothesis property tests of the three parameterizations against dense references."""

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

from structmat import Butterfly, LowRank, Monarch

dtypes = st.sampled_from([torch.float32, torch.float64])
lead_dims = st.lists(st.integers(1, 3), min_size=0, max_size=2)


def close(a, b, dtype):
    tol = 1e-10 if dtype == torch.float64 else 2e-4
    torch.testing.assert_close(a, b, rtol=tol, atol=tol * max(1.0, float(b.detach().abs().max())))


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
def test_monarch_forward_equals_dense(args, lead, dtype):
    in_f, out_f, nblocks, rank = args
    m = Monarch(in_f, out_f, nblocks, rank, dtype=dtype)
    x = torch.randn(*lead, in_f, dtype=dtype)
    y = m(x)
    assert y.shape == (*lead, out_f) and y.dtype == dtype
    close(y, x @ m.to_dense().T, dtype)


@given(monarch_args())
def test_monarch_rank_equals_capacity(args):
    """matrix_rank <= max_rank always, with equality for a random instance."""
    in_f, out_f, nblocks, rank = args
    m = Monarch(in_f, out_f, nblocks, rank, dtype=torch.float64)
    assert torch.linalg.matrix_rank(m.to_dense()) == m.max_rank


@given(monarch_args(divisible=True))
def test_monarch_random_reaches_min_nblocks_rank(args):
    in_f, out_f, nblocks, rank = args
    m = Monarch(in_f, out_f, nblocks, rank, dtype=torch.float64)
    expected = min(nblocks * rank, in_f, out_f)
    assert m.max_rank == expected
    assert torch.linalg.matrix_rank(m.to_dense()) == expected


@given(monarch_args())
def test_monarch_num_params(args):
    in_f, out_f, nblocks, rank = args
    m = Monarch(in_f, out_f, nblocks, rank)
    assert m.num_params == sum(p.numel() for p in m.parameters())
    if in_f % nblocks == 0 and out_f % nblocks == 0:
        assert m.num_params == rank * (in_f + out_f)


@given(st.integers(1, 4), st.integers(1, 4), st.integers(1, 5), st.integers(1, 4), st.integers(1, 5), dtypes)
def test_monarch_general_factors_forward(k, q, p, l, s, dtype):
    assume((k * q) % l == 0)
    r = k * q // l
    m = Monarch.from_factors(torch.randn(k, q, p, dtype=dtype), torch.randn(l, s, r, dtype=dtype))
    x = torch.randn(3, k * p, dtype=dtype)
    close(m(x), x @ m.to_dense().T, dtype)
    assert torch.linalg.matrix_rank(m.to_dense().detach()) == m.max_rank


@given(monarch_args(), st.integers(1, 3), dtypes)
def test_monarch_batched_matches_each(args, b, dtype):
    in_f, out_f, nblocks, rank = args
    m = Monarch(in_f, out_f, nblocks, rank, batch_shape=(b,), dtype=dtype)
    x = torch.randn(b, 4, in_f, dtype=dtype)
    dense = m.to_dense()
    assert dense.shape == (b, out_f, in_f)
    close(m(x), x @ dense.mT, dtype)
    one = Monarch.from_factors(m.blkdiag1[0], m.blkdiag2[0], in_f, out_f)
    close(dense[0], one.to_dense(), dtype)


@given(st.integers(1, 30), st.integers(1, 30), st.data(), lead_dims, dtypes)
def test_lowrank_properties(in_f, out_f, data, lead, dtype):
    rank = data.draw(st.integers(1, min(in_f, out_f)))
    lr = LowRank(in_f, out_f, rank, dtype=dtype)
    x = torch.randn(*lead, in_f, dtype=dtype)
    close(lr(x), x @ lr.to_dense().T, dtype)
    assert lr.num_params == rank * (in_f + out_f) == sum(p.numel() for p in lr.parameters())
    assert torch.linalg.matrix_rank(lr.to_dense().detach()) == lr.max_rank == rank


@given(st.integers(1, 40), st.integers(1, 40), st.booleans(), st.booleans(), lead_dims, dtypes)
def test_butterfly_properties(in_f, out_f, increasing, cplx, lead, dtype):
    bf = Butterfly(in_f, out_f, increasing_stride=increasing, complex=cplx, init="randn", dtype=dtype)
    x = torch.randn(*lead, in_f, dtype=dtype)
    dense = bf.to_dense()
    close(bf(x), x.to(dense.dtype) @ dense.T, dtype)
    n = bf.n
    assert bf.num_params == 2 * n * (n.bit_length() - 1) == sum(p.numel() for p in bf.parameters())
    assert torch.linalg.matrix_rank(dense.to(torch.complex128)) <= bf.max_rank


@pytest.mark.parametrize(
    "make",
    [
        lambda: Monarch(12, 20, 4, 3, dtype=torch.float64),
        lambda: Monarch(10, 7, 3, 2, dtype=torch.float64),
        lambda: LowRank(9, 5, 2, dtype=torch.float64),
        lambda: Butterfly(8, dtype=torch.float64),
        lambda: Butterfly(6, 8, complex=True, dtype=torch.float64),
    ],
)
def test_gradcheck(make):
    torch.manual_seed(0)
    op = make()
    names = [n for n, _ in op.named_parameters()]
    x = torch.randn(2, op.in_features, dtype=torch.float64, requires_grad=True)
    params = tuple(p.detach().clone().requires_grad_(True) for p in op.parameters())

    def f(x, *values):
        return torch.func.functional_call(op, dict(zip(names, values, strict=True)), (x,))

    assert torch.autograd.gradcheck(f, (x, *params))


@pytest.mark.parametrize("expanded_max_middle", [0, 10**6], ids=["bmm", "expanded"])
@given(monarch_args(), lead_dims, dtypes, st.booleans())
def test_monarch_addmm_equals_add_of_forward_with_grads(expanded_max_middle, args, lead, dtype, recompute):
    """``addmm(y, x) == y + x @ M.T`` on every path (the add is fused on some), gradients too."""
    from structmat.monarch import multiply

    in_f, out_f, nblocks, rank = args
    old = multiply.EXPANDED_MAX_MIDDLE
    multiply.EXPANDED_MAX_MIDDLE = expanded_max_middle
    try:
        m = Monarch(in_f, out_f, nblocks, rank, dtype=dtype)
        m.recompute_middle = recompute
        x = torch.randn(*lead, in_f, dtype=dtype, requires_grad=True)
        y = torch.randn(*lead, out_f, dtype=dtype, requires_grad=True)
        out = m.addmm(y, x)
        assert out.shape == y.shape and out.dtype == dtype
        close(out, y + x @ m.to_dense().T, dtype)
        g = torch.randn_like(out)
        fused = torch.autograd.grad(out, (x, y, *m.parameters()), g)
        plain = torch.autograd.grad(y + m(x), (x, y, *m.parameters()), g)
    finally:
        multiply.EXPANDED_MAX_MIDDLE = old
    for a, b in zip(fused, plain, strict=True):
        close(a, b, dtype)


@pytest.mark.parametrize(
    "make", [lambda: LowRank(9, 5, 2), lambda: Butterfly(6, 8), lambda: Monarch(12, 20, 4, 3, batch_shape=(2,))]
)
def test_addmm_generic_and_dtype_of_y(make):
    op = make()
    x = torch.randn(*op.batch_shape, 3, op.in_features)
    y = torch.randn(*op.batch_shape, 3, op.out_features, dtype=torch.float64)
    out = op.addmm(y, x)
    assert out.dtype == torch.float64  # y's dtype, as an adapter's base output
    dense = op.to_dense().detach()
    torch.testing.assert_close(out, y + (x.to(dense.dtype) @ dense.mT).real.double(), rtol=1e-5, atol=1e-5)


def test_monarch_recompute_functions_gradcheck_with_add():
    from structmat.monarch.multiply import _ExpandedRecompute, _MonarchRecompute

    torch.manual_seed(0)
    shapes = ((5, 12), (4, 2, 3), (2, 6, 4), (5, 12))  # x (n, k*p), blkdiag1, blkdiag2, add (n, l*s)
    ins = [torch.randn(*sh, dtype=torch.float64, requires_grad=True) for sh in shapes]
    for fn in (_MonarchRecompute, _ExpandedRecompute):
        assert torch.autograd.gradcheck(fn.apply, ins)
