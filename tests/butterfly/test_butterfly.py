import math

import numpy as np
import pytest
import scipy.linalg
import torch

from structmat import Butterfly, dft_butterfly, hadamard_butterfly
from structmat.butterfly import bit_reversal_permutation


@pytest.mark.parametrize("n", [2**i for i in range(1, 11)])
def test_hadamard_equals_scipy(n):
    H = torch.from_numpy(scipy.linalg.hadamard(n).astype(np.float64))
    torch.testing.assert_close(hadamard_butterfly(n, dtype=torch.float64).to_dense().detach(), H, rtol=0, atol=0)
    torch.testing.assert_close(
        hadamard_butterfly(n, normalized=True, dtype=torch.float64).to_dense().detach(), H / math.sqrt(n)
    )


@pytest.mark.parametrize("n", [2, 4, 8, 64, 256])
def test_dft_equals_fft(n):
    F = torch.fft.fft(torch.eye(n, dtype=torch.complex128), dim=0)
    torch.testing.assert_close(dft_butterfly(n, dtype=torch.float64).to_dense().detach(), F)
    x = torch.randn(3, n, dtype=torch.float64)
    torch.testing.assert_close(
        dft_butterfly(n, normalized=True, dtype=torch.float64)(x).detach(),
        torch.fft.fft(x.to(torch.complex128), norm="ortho"),
    )


def test_bit_reversal():
    assert bit_reversal_permutation(8).tolist() == [0, 4, 2, 6, 1, 5, 3, 7]


def test_ortho_init_is_orthogonal():
    M = Butterfly(32, dtype=torch.float64).to_dense().detach()
    torch.testing.assert_close(M @ M.T, torch.eye(32, dtype=torch.float64))


@pytest.mark.parametrize("n", [3, 0])
def test_hadamard_needs_power_of_two(n):
    with pytest.raises(ValueError, match="n must be"):
        hadamard_butterfly(n)


def test_complex_requires_flag_for_complex_dtype():
    with pytest.raises(TypeError, match="dtype"):
        Butterfly(8, dtype=torch.complex64)
