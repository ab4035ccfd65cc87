"""fit_butterfly on transforms it must recover, and honesty where it cannot."""

import scipy.linalg
import torch
from helpers import butterfly_dense_reference
from hypothesis import given
from hypothesis import strategies as st

from structmat import Butterfly, fit_butterfly

dtypes = st.sampled_from([torch.float32, torch.float64])
lead_dims = st.lists(st.integers(1, 3), min_size=0, max_size=2)


@given(st.integers(1, 40), st.integers(1, 40), st.booleans(), st.booleans(), lead_dims, dtypes)
def test_butterfly_properties(in_f, out_f, increasing, cplx, lead, dtype):
    bf = Butterfly(in_f, out_f, increasing_stride=increasing, complex=cplx, init="randn", dtype=dtype)
    x = torch.randn(*lead, in_f, dtype=dtype)
    reference = butterfly_dense_reference(bf)
    tol = 1e-10 if dtype == torch.float64 else 2e-4
    torch.testing.assert_close(bf(x), x.to(reference.dtype) @ reference.T, rtol=tol, atol=tol)
    n = bf.n
    assert bf.num_params == 2 * n * (n.bit_length() - 1)
    assert torch.linalg.matrix_rank(reference.to(torch.complex128)) <= bf.max_rank


def test_fit_butterfly_recovers_hadamard_256():
    H = torch.tensor(scipy.linalg.hadamard(256), dtype=torch.float32)
    bf = fit_butterfly(H, seed=0, progress=False)
    assert bf.fit_error.item() < 1e-4
    err = torch.linalg.matrix_norm(H - bf.to_dense().detach()) / torch.linalg.matrix_norm(H)
    assert abs(err.item() - bf.fit_error.item()) < 1e-6  # the reported error is the real one


def test_fit_butterfly_recovers_dft_64():
    F = torch.fft.fft(torch.eye(64, dtype=torch.complex64), dim=0)
    bf = fit_butterfly(F, complex=True, bit_reversal=True, seed=0, progress=False)
    assert bf.fit_error.item() < 1e-4


def test_fit_butterfly_reports_honest_error_on_random_target():
    W = torch.randn(16, 16, dtype=torch.float64)
    bf = fit_butterfly(W, steps=200, lbfgs_steps=50, restarts=2, progress=False)
    err = torch.linalg.matrix_norm(W - bf.to_dense().detach()) / torch.linalg.matrix_norm(W)
    assert abs(err.item() - bf.fit_error.item()) < 1e-12
    assert 0.05 < bf.fit_error.item() < 1.0  # a random matrix is far from any butterfly
