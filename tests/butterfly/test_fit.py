"""fit_butterfly on transforms it must recover, and honesty where it cannot.

References are independent of structmat: scipy.fft.dct, torch.fft, scipy.linalg.circulant and
scipy.linalg.hadamard; errors are measured here, from the dense matrices, not taken from fit_error.
"""

import math

import numpy as np
import pytest
import scipy.fft
import scipy.linalg
import torch
from helpers import butterfly_dense_reference
from hypothesis import given
from hypothesis import strategies as st

from structmat import Butterfly, fit_butterfly
from structmat.butterfly import is_permutation

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


# -- structure found from the dense matrix ------------------------------------------------------


def rel_err(W, M):
    return (torch.linalg.matrix_norm(W - M) / torch.linalg.matrix_norm(W)).max().item()


def dct2(n, dtype=torch.float32):
    return torch.tensor(scipy.fft.dct(np.eye(n), norm="ortho", axis=0), dtype=dtype)


def transforms(n):
    rng = np.random.default_rng(0)
    return {
        "dft": torch.fft.fft(torch.eye(n, dtype=torch.complex64), dim=0),
        "dct2": dct2(n),
        "circulant": torch.tensor(scipy.linalg.circulant(rng.standard_normal(n)), dtype=torch.float32),
        "hadamard": torch.tensor(scipy.linalg.hadamard(n), dtype=torch.float32),
    }


@pytest.mark.parametrize("name", ["dft", "dct2", "circulant", "hadamard"])
def test_recovers_classic_transforms_from_the_dense_matrix(name):
    n = 64
    W = transforms(n)[name]
    bf = fit_butterfly(W, progress=False)
    dense = bf.to_dense().detach()
    assert rel_err(W, dense) < 1e-4
    assert abs(rel_err(W, dense) - bf.fit_error.item()) < 1e-6  # the reported error is the real one
    x = torch.randn(5, n)
    torch.testing.assert_close(bf(x), x.to(W.dtype) @ W.T, rtol=1e-4, atol=1e-4 * math.sqrt(n))
    info = bf.fit_info
    assert info["recovered"] and info["phase"] == "closed form" and info["stopped"] == "tol"
    assert info["adam_steps"] == 0 < info["steps_budget"]  # stopped long before the step budget
    # a product of butterflies and index permutations: no dense matrix among the parameters
    assert [p for p, _ in bf.named_parameters()] == ["twiddle"]
    for perm in (bf.in_perm, bf.out_perm):
        assert perm is not None and perm.dtype == torch.long and bool(is_permutation(perm))


def test_real_transforms_get_real_factors_and_a_real_circulant_real_outputs():
    ts = transforms(32)
    dct = fit_butterfly(ts["dct2"], progress=False)
    assert not dct.is_complex and dct.twiddle.dtype == torch.float32
    assert dct.nblocks == 2  # the DCT-II is no single butterfly with these permutations, but P B B* P
    circ = fit_butterfly(ts["circulant"], progress=False)
    assert circ.is_complex and circ.real_output  # F^-1 diag(F c) F needs complex factors
    assert circ(torch.randn(3, 32)).dtype == torch.float32
    with pytest.raises(ValueError, match="W is complex"):
        fit_butterfly(ts["dft"], complex=False)


def test_dct_in_float64_to_rounding_error_and_dst_via_the_transpose():
    n = 128
    C = dct2(n, torch.float64)
    bf = fit_butterfly(C, progress=False)
    assert rel_err(C, bf.to_dense().detach()) < 1e-12
    S = torch.tensor(scipy.fft.dst(np.eye(n), norm="ortho", axis=0))
    assert rel_err(S, fit_butterfly(S, progress=False).to_dense().detach()) < 1e-12


def test_gaussian_is_reported_as_not_recovered():
    W = torch.randn(32, 32, generator=torch.Generator().manual_seed(0))
    bf = fit_butterfly(W, steps=400, lbfgs_steps=40, progress=False)
    info = bf.fit_info
    assert not info["recovered"] and info["phase"] == "gradient"
    assert all(not t["exact"] for t in info["tried"])
    assert bf.fit_error.item() > 0.3  # a Gaussian matrix is far from any butterfly
    assert abs(rel_err(W, bf.to_dense().detach()) - bf.fit_error.item()) < 1e-6


def test_a_stalled_fit_stops_before_its_budget():
    W = torch.randn(16, 16, generator=torch.Generator().manual_seed(1))
    bf = fit_butterfly(W, closed_form=False, steps=5000, lbfgs_steps=500, patience=50, progress=False)
    info = bf.fit_info
    assert info["stopped"] == "stall"
    assert info["adam_steps"] < 5000 and info["lbfgs_steps"] < 500


def test_gradient_phase_stops_at_tol_for_a_reachable_target():
    """The fixed FFT structure (no closed form): Adam/L-BFGS reach tol and stop there."""
    F = torch.fft.fft(torch.eye(16, dtype=torch.complex128), dim=0, norm="ortho")
    bf = fit_butterfly(F, learn_perm=False, bit_reversal=True, tol=1e-8, restarts=4, progress=False)
    info = bf.fit_info
    assert info["phase"] == "gradient" and info["stopped"] == "tol" and info["recovered"]
    assert rel_err(F, bf.to_dense().detach()) <= 1e-8
    assert info["adam_steps"] + info["lbfgs_steps"] < info["steps_budget"] + info["lbfgs_budget"]


def test_max_time_stops_the_fit():
    W = torch.randn(16, 16)
    bf = fit_butterfly(W, closed_form=False, max_time=1e-6, progress=False)
    assert bf.fit_info["stopped"] == "time" and bf.fit_info["adam_steps"] == 0


def test_progress_bar_is_shown_without_a_terminal_and_counts_the_budget(capsys):
    fit_butterfly(transforms(16)["hadamard"], steps=10, lbfgs_steps=5)
    err = capsys.readouterr().err
    assert "fit_butterfly" in err and "/23" in err  # 8 closed-form structures + 10 + 5 steps
    assert "rel_err" in err
    fit_butterfly(transforms(16)["hadamard"], progress=False)
    assert "fit_butterfly" not in capsys.readouterr().err


def test_stack_of_matrices_gets_one_batched_module():
    rng = np.random.default_rng(3)
    W = torch.stack([torch.tensor(scipy.linalg.circulant(rng.standard_normal(16))) for _ in range(3)])
    bf = fit_butterfly(W, progress=False)
    assert bf.batch_shape == (3,) and bf.fit_error.shape == (3,)
    assert rel_err(W, bf.to_dense().detach()) < 1e-10


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_fit_butterfly_on_cuda():
    for name, W in transforms(256).items():
        bf = fit_butterfly(W.cuda(), progress=False)
        assert bf.device.type == "cuda" and bf.fit_info["recovered"], name
        assert rel_err(W.cuda(), bf.to_dense().detach()) < 1e-4


@pytest.mark.parametrize("noise", [1e-6, 1e-3])
def test_transform_plus_noise_is_fitted_to_the_noise_level(noise):
    """Not exact, so not recovered, but the near miss is polished: the error is about the noise."""
    n = 32
    C = dct2(n, torch.float64)
    E = torch.randn(n, n, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    W = C + noise * E / torch.linalg.matrix_norm(E) * torch.linalg.matrix_norm(C)
    bf = fit_butterfly(W, progress=False)
    assert bf.fit_info["phase"] == "closed form + polish" and not bf.fit_info["recovered"]
    assert rel_err(W, bf.to_dense().detach()) < 1.2 * noise  # C itself is within noise of W


def test_relaxed_permutations_in_the_gradient_phase_are_rounded_to_index_permutations():
    W = torch.randn(16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    bf = fit_butterfly(W, closed_form=False, relax=True, steps=60, lbfgs_steps=5, progress=False)
    assert bf.fit_info["phase"] == "gradient" and not bf.learns_permutations
    assert [p for p, _ in bf.named_parameters()] == ["twiddle"]
    for perm in (bf.in_perm, bf.out_perm):
        assert perm.dtype == torch.long and perm.shape == (16,) and bool(is_permutation(perm))
    torch.testing.assert_close(bf.to_dense().detach(), butterfly_dense_reference(bf))
