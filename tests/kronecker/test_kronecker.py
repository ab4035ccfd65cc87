"""Kronecker and fit_kronecker against independent references: an entrywise formula for the
module (tests/helpers.py) and, for the fit, numpy's SVD of the Van Loan-Pitsianis rearrangement
written out here with loops."""

import math

import numpy as np
import pytest
import torch
from helpers import kronecker_dense_reference
from hypothesis import given
from hypothesis import strategies as st

import structmat as sm
from structmat.analysis import target_suite
from structmat.kronecker import balanced_a_shape

RTOL = 1e-10  # the acceptance bar of #28: the fit meets the optimum to 1e-10 relative in float64
FLOOR = 1e-14  # where the optimum is 0 (W of the structure), round-off: ~50 eps


def numpy_rearranged(W: np.ndarray, m1: int, n1: int) -> np.ndarray:
    """``R[i1*n1 + j1, i2*n2 + j2] = W[i1*m2 + i2, j1*n2 + j2]``, one entry at a time."""
    m2, n2 = W.shape[0] // m1, W.shape[1] // n1
    R = np.empty((m1 * n1, m2 * n2))
    for i1 in range(m1):
        for j1 in range(n1):
            for i2 in range(m2):
                for j2 in range(n2):
                    R[i1 * n1 + j1, i2 * n2 + j2] = W[i1 * m2 + i2, j1 * n2 + j2]
    return R


def numpy_optimum(W: np.ndarray, m1: int, n1: int, rank: int) -> float:
    """The smallest ``||W - sum_k A_k ⊗ B_k||_F / ||W||_F`` (Eckart-Young on the rearrangement)."""
    sv = np.linalg.svd(numpy_rearranged(W, m1, n1), compute_uv=False)
    return math.sqrt(float(np.sum(sv[rank:] ** 2))) / float(np.linalg.norm(W))


def true_error(W: torch.Tensor, op) -> float:
    M = kronecker_dense_reference(op).double()
    return float(torch.linalg.matrix_norm(W - M) / torch.linalg.matrix_norm(W))


def divisor(draw, n: int) -> int:
    return draw(st.sampled_from([d for d in range(1, n + 1) if n % d == 0]))


@given(st.integers(1, 12), st.integers(1, 12), st.data())
def test_fit_meets_the_independent_optimum_on_random_rectangular_matrices(out_f, in_f, data):
    m1, n1 = divisor(data.draw, out_f), divisor(data.draw, in_f)
    m2, n2 = out_f // m1, in_f // n1
    rank = data.draw(st.integers(1, min(m1 * n1, m2 * n2)))
    W = torch.randn(
        out_f, in_f, dtype=torch.float64, generator=torch.Generator().manual_seed(data.draw(st.integers(0, 99)))
    )
    want = numpy_optimum(W.numpy(), m1, n1, rank)
    fitted = sm.fit_kronecker(W, a_shape=(m1, n1), rank=rank)
    assert fitted.a_shape == (m1, n1) and fitted.b_shape == (m2, n2) and fitted.rank == rank
    tol = RTOL * want + FLOOR
    assert abs(true_error(W, fitted) - want) <= tol  # the module's own matrix, from the entrywise formula
    assert abs(fitted.fit_error.item() - want) <= tol
    assert abs(sm.optimal_error(W, "kronecker", a_shape=(m1, n1), rank=rank).item() - want) <= tol


@pytest.mark.parametrize(
    "shape,a_shape,rank,noise",
    [((12, 20), (3, 4), 2, 0.0), ((12, 20), (3, 4), 2, 1e-3), ((30, 8), (5, 2), 3, 1e-2), ((16, 64), (4, 8), 1, 0.0)],
)
def test_fit_meets_the_optimum_on_structured_rectangular_matrices(shape, a_shape, rank, noise):
    """A sum of ``rank`` Kronecker products (plus noise): recovered exactly without noise."""
    g = torch.Generator().manual_seed(1)
    (m1, n1), (m2, n2) = a_shape, (shape[0] // a_shape[0], shape[1] // a_shape[1])
    A = torch.randn(rank, m1, n1, dtype=torch.float64, generator=g)
    B = torch.randn(rank, m2, n2, dtype=torch.float64, generator=g)
    W = sum(torch.kron(A[k], B[k]) for k in range(rank))
    W = W + noise * torch.randn(*shape, dtype=torch.float64, generator=g) * W.norm() / math.sqrt(W.numel())
    want = numpy_optimum(W.numpy(), m1, n1, rank)
    fitted = sm.fit_kronecker(W, a_shape, rank)
    if noise == 0:
        assert want < 1e-14 and true_error(W, fitted) < 1e-13 and fitted.fit_error.item() < 1e-13
    else:
        assert abs(true_error(W, fitted) - want) <= RTOL * want
        assert abs(sm.optimal_error(W, "kronecker", a_shape=a_shape, rank=rank).item() - want) <= RTOL * want
    # one term fewer than the structure has cannot be exact
    if rank > 1:
        assert sm.optimal_error(W, "kronecker", a_shape=a_shape, rank=rank - 1).item() > 1e-3


def test_walsh_hadamard_is_one_kronecker_product():
    H = target_suite(16)["Walsh-Hadamard"]
    assert sm.fit_kronecker(H, (4, 4), 1).fit_error.item() < 1e-14  # H16 = H4 ⊗ H4


def test_batched_fit_is_the_fit_of_each_matrix():
    W = torch.randn(2, 3, 6, 8, dtype=torch.float64)
    stack = sm.fit_kronecker(W, (2, 4), 2)
    assert stack.batch_shape == (2, 3) and stack.fit_error.shape == (2, 3)
    for i in range(2):
        for j in range(3):
            one = sm.fit_kronecker(W[i, j], (2, 4), 2)
            assert abs(stack.fit_error[i, j].item() - one.fit_error.item()) < 1e-12
            want = numpy_optimum(W[i, j].numpy(), 2, 4, 2)
            assert abs(stack.fit_error[i, j].item() - want) < 1e-12
    torch.testing.assert_close(kronecker_dense_reference(stack)[1, 2], kronecker_dense_reference(one))
    opt = sm.optimal_error(W, "kronecker", a_shape=(2, 4), rank=2)
    torch.testing.assert_close(opt, stack.fit_error)


@pytest.mark.parametrize("scale", [1e-20, 1.0, 1e20])
def test_fit_is_scale_free(scale):
    W = torch.randn(8, 12, generator=torch.Generator().manual_seed(0))
    want = numpy_optimum(W.double().numpy(), 2, 3, 2)
    fitted = sm.fit_kronecker(W * scale, (2, 3), 2)
    assert fitted.fit_error.dtype == torch.float32 and abs(fitted.fit_error.item() - want) < 1e-5
    assert abs(sm.optimal_error(W * scale, "kronecker", a_shape=(2, 3), rank=2).item() - want) < 1e-5


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_fit(dtype):
    W = torch.randn(8, 12, generator=torch.Generator().manual_seed(0)).to(dtype)
    want = numpy_optimum(W.double().numpy(), 2, 3, 2)
    fitted = sm.fit_kronecker(W, (2, 3), 2)
    assert fitted.dtype == dtype and fitted.fit_error.dtype == dtype
    assert abs(true_error(W.double(), fitted) - want) < 2e-2  # factors rounded to half precision
    assert abs(fitted.fit_error.double().item() - true_error(W.double(), fitted)) < 1e-2


def test_bad_inputs_name_the_argument():
    W = torch.randn(12, 20, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"a_shape=\(5, 4\) must divide \(out_features, in_features\)=\(12, 20\)"):
        sm.fit_kronecker(W, (5, 4))
    with pytest.raises(ValueError, match=r"a_shape=\(3, 3\) must divide"):
        sm.optimal_error(W, "kronecker", a_shape=(3, 3), rank=1)
    with pytest.raises(ValueError, match="a_shape must be a pair of positive integers"):
        sm.fit_kronecker(W, (3, 4, 1))
    with pytest.raises(ValueError, match="a_shape must be a pair of positive integers"):
        sm.fit_kronecker(W, (0, 4))
    # the rearranged matrix is (3*4, 4*5) = (12, 20): rank 12 already gives every matrix
    with pytest.raises(ValueError, match="rank=13 is larger than the largest useful rank 12"):
        sm.fit_kronecker(W, (3, 4), 13)
    with pytest.raises(ValueError, match="rank=13 is larger"):
        sm.optimal_error(W, "kronecker", a_shape=(3, 4), rank=13)
    with pytest.raises(ValueError, match="rank=13 is larger"):
        sm.Kronecker(20, 12, (3, 4), 13)
    assert sm.fit_kronecker(W, (3, 4), 12).fit_error.item() < 1e-12  # the largest useful rank is exact
    with pytest.raises(ValueError, match="rank must be a positive integer"):
        sm.fit_kronecker(W, (3, 4), 0)
    W[0, 0] = float("nan")
    with pytest.raises(ValueError, match="W contains NaN or inf"):
        sm.fit_kronecker(W, (3, 4))
    W[0, 0] = float("inf")
    with pytest.raises(ValueError, match="W contains NaN or inf"):
        sm.optimal_error(W, "kronecker", a_shape=(3, 4), rank=1)
    with pytest.raises(TypeError, match="W must have a floating-point dtype"):
        sm.fit_kronecker(torch.randn(4, 4, dtype=torch.complex64), (2, 2))


def test_optimal_error_takes_complex_matrices():
    W = torch.randn(8, 8, dtype=torch.float64)
    real = sm.optimal_error(W, "kronecker", a_shape=(2, 2), rank=2)
    torch.testing.assert_close(
        sm.optimal_error((1 - 3j) * W.to(torch.complex128), "kronecker", a_shape=(2, 2), rank=2), real
    )


@given(st.integers(1, 10), st.integers(1, 10), st.data())
def test_max_rank_is_the_rank_of_a_random_instance(out_f, in_f, data):
    m1, n1 = divisor(data.draw, out_f), divisor(data.draw, in_f)
    rank = data.draw(st.integers(1, min(m1 * n1, (out_f // m1) * (in_f // n1))))
    torch.manual_seed(data.draw(st.integers(0, 99)))
    op = sm.Kronecker(in_f, out_f, (m1, n1), rank, dtype=torch.float64)
    assert int(torch.linalg.matrix_rank(kronecker_dense_reference(op))) == op.max_rank
    assert op.num_params == rank * (m1 * n1 + (out_f // m1) * (in_f // n1))


def test_balanced_a_shape():
    assert balanced_a_shape(256, 256) == (16, 16)  # 512 parameters per term, full rank in one term
    assert sm.Kronecker(256, 256, rank=1).max_rank == 256
    assert balanced_a_shape(1536, 384) == (32, 24)  # the fewest parameters per term (768 + 768)
    assert balanced_a_shape(7, 5) in {(1, 5), (7, 1)}  # primes: one side is a vector


def test_complex_input_acts_on_both_parts():
    op = sm.Kronecker(6, 4, (2, 3), 2, dtype=torch.float64)
    x = torch.randn(3, 6, dtype=torch.complex128)
    M = kronecker_dense_reference(op)
    torch.testing.assert_close(op(x), x @ M.T.to(x.dtype))
