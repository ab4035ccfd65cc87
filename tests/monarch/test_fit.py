"""fit_monarch against independent optima (block SVDs written from the formula, gradient descent)."""

import math

import pytest
import torch
from helpers import independent_general_optimum
from hypothesis import assume, given
from hypothesis import strategies as st

from structmat import Monarch, fit_monarch, optimal_error


def independent_monarch_optimum(W: torch.Tensor, nblocks: int, rank: int) -> float:
    """The block-by-block numpy optimum (tests/helpers.py) for MoRe shapes: k = l = nblocks,
    q = r = rank, p = ceil(in/nblocks), s = ceil(out/nblocks)."""
    out_f, in_f = W.shape
    p, s = math.ceil(in_f / nblocks), math.ceil(out_f / nblocks)
    return independent_general_optimum(W.numpy(), nblocks, rank, p, nblocks, s)


@st.composite
def fit_cases(draw):
    nblocks = draw(st.integers(1, 5))
    in_f = draw(st.integers(nblocks, 30))
    out_f = draw(st.integers(nblocks, 30))
    assume((nblocks - 1) * math.ceil(in_f / nblocks) < in_f)
    rank = draw(st.integers(1, min(in_f, out_f, 8)))
    return out_f, in_f, nblocks, rank


@given(fit_cases(), st.integers(0, 2**16))
def test_fit_monarch_reaches_independent_optimum(case, seed):
    out_f, in_f, nblocks, rank = case
    W = torch.randn(out_f, in_f, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    m = fit_monarch(W, nblocks, rank)
    achieved = torch.linalg.matrix_norm(W - m.to_dense().detach()) / torch.linalg.matrix_norm(W)
    expected = independent_monarch_optimum(W, nblocks, rank)
    assert abs(achieved.item() - expected) <= 1e-5 * expected + 1e-12
    assert abs(m.fit_error.item() - achieved.item()) <= 1e-12
    assert abs(optimal_error(W, "monarch", nblocks=nblocks, rank=rank).item() - expected) <= 1e-10


@pytest.mark.parametrize("method", ["svd", "gram"])
@pytest.mark.parametrize("shape,nblocks,rank", [((64, 48), 4, 1), ((48, 64), 4, 4), ((60, 60), 4, 6)])
def test_fit_monarch_methods_agree(method, shape, nblocks, rank):
    W = torch.randn(*shape, dtype=torch.float64)
    m = fit_monarch(W, nblocks, rank, method=method)
    expected = independent_monarch_optimum(W, nblocks, rank)
    assert abs(m.fit_error.item() - expected) <= 1e-5 * expected


@pytest.mark.parametrize("shape,nblocks,rank", [((16, 16), 4, 1), ((24, 16), 4, 2), ((20, 12), 2, 3)])
def test_gradient_descent_never_beats_fit_monarch(shape, nblocks, rank):
    """L-BFGS and Adam on the same factor shapes, 5 random starts each, stay above the optimum."""
    torch.manual_seed(0)
    W = torch.randn(*shape, dtype=torch.float64)
    best = fit_monarch(W, nblocks, rank).fit_error.item()
    norm = torch.linalg.matrix_norm(W)
    for start in range(5):
        torch.manual_seed(start)
        m = Monarch(shape[1], shape[0], nblocks, rank, dtype=torch.float64)
        opt = torch.optim.LBFGS(m.parameters(), max_iter=300, line_search_fn="strong_wolfe")

        def closure(m=m, opt=opt):
            opt.zero_grad()
            loss = torch.linalg.matrix_norm(W - m.to_dense()).square()
            loss.backward()
            return loss

        opt.step(closure)
        gd = (torch.linalg.matrix_norm(W - m.to_dense()) / norm).item()
        assert gd >= best * (1 - 1e-9)
        m2 = Monarch(shape[1], shape[0], nblocks, rank, dtype=torch.float64)
        adam = torch.optim.Adam(m2.parameters(), lr=0.02)
        for _ in range(300):
            adam.zero_grad()
            loss = torch.linalg.matrix_norm(W - m2.to_dense()).square()
            loss.backward()
            adam.step()
        assert (torch.linalg.matrix_norm(W - m2.to_dense()) / norm).item() >= best * (1 - 1e-9)


@pytest.mark.parametrize("shape,nblocks,rank", [((32, 32), 4, 1), ((48, 32), 4, 3), ((30, 21), 4, 2)])
def test_fit_monarch_recovers_monarch(shape, nblocks, rank):
    torch.manual_seed(1)
    M = Monarch(shape[1], shape[0], nblocks, rank, dtype=torch.float64).to_dense().detach()
    m = fit_monarch(M, nblocks, rank)
    assert m.fit_error.item() < 1e-6
    torch.testing.assert_close(m.to_dense().detach(), M)


def test_fit_monarch_classic_square():
    W = torch.randn(64, 64, dtype=torch.float64)
    m = fit_monarch(W, "sqrt")
    assert (m.nblocks, m.rank) == (8, 8)
    assert abs(m.fit_error.item() - independent_monarch_optimum(W, 8, 8)) < 1e-10


def test_fit_monarch_stack_matches_one_by_one():
    W = torch.randn(2, 3, 20, 12, dtype=torch.float64)
    m = fit_monarch(W, 4, 2)
    assert m.batch_shape == (2, 3) and m.fit_error.shape == (2, 3)
    dense = m.to_dense().detach()
    for i in range(2):
        for j in range(3):
            one = fit_monarch(W[i, j], 4, 2)
            assert abs(one.fit_error.item() - m.fit_error[i, j].item()) < 1e-12
            torch.testing.assert_close(dense[i, j], one.to_dense().detach())
