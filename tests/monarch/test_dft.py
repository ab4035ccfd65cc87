"""``dft_monarch`` against torch.fft.fft / ifft on batches of complex vectors, and its dense matrix
against scipy.linalg.dft (the permutation checked against its own formula)."""

import math

import numpy as np
import pytest
import scipy.linalg
import torch
from helpers import monarch_dense_reference

from structmat import dft_monarch

CASES = [(16, None), (64, None), (1024, None), (32, (4, 8)), (48, (8, 6)), (15, (3, 5)), (7, None)]


def relative(y: torch.Tensor, ref: torch.Tensor) -> float:
    """The largest ``||y - ref|| / ||ref||`` over the vectors of the batch."""
    return float(((y.detach() - ref).norm(dim=-1) / ref.norm(dim=-1)).max())


@pytest.mark.parametrize("n,sizes", CASES)
def test_dft_monarch_equals_torch_fft(n, sizes):
    M, perm = dft_monarch(n, sizes)
    assert M.dtype == torch.complex64 and M.shape == (n, n)
    x = torch.randn(4, 3, n, dtype=torch.complex64, generator=torch.Generator().manual_seed(n))
    assert relative(M(x[..., perm]), torch.fft.fft(x)) < 1e-5
    xr = torch.randn(5, n, generator=torch.Generator().manual_seed(1))  # a real signal
    assert relative(M(xr[..., perm]), torch.fft.fft(xr)) < 1e-5


@pytest.mark.parametrize("n,sizes", [(64, None), (1024, None), (48, (8, 6))])
@pytest.mark.parametrize("inverse", [False, True])
@pytest.mark.parametrize("normalized", [False, True])
def test_dft_monarch_inverse_and_norm(n, sizes, inverse, normalized):
    M, perm = dft_monarch(n, sizes, inverse=inverse, normalized=normalized, dtype=torch.complex128)
    x = torch.randn(3, n, dtype=torch.complex128, generator=torch.Generator().manual_seed(0))
    transform = torch.fft.ifft if inverse else torch.fft.fft
    assert relative(M(x[..., perm]), transform(x, norm="ortho" if normalized else "backward")) < 1e-12


@pytest.mark.parametrize("n,sizes", CASES)
def test_dft_monarch_dense_is_the_permuted_dft(n, sizes):
    M, perm = dft_monarch(n, sizes, dtype=torch.complex128)
    n1, n2 = sizes or (M.structure.l, M.structure.k)
    a, t = np.divmod(np.arange(n), n1)  # perm[a*n1 + t] = n2*t + a
    np.testing.assert_array_equal(perm.numpy(), n2 * t + a)
    assert sorted(perm.tolist()) == list(range(n))
    F = torch.from_numpy(scipy.linalg.dft(n))
    torch.testing.assert_close(M.to_dense(), F[:, perm], rtol=0, atol=1e-13 * math.sqrt(n))
    if n <= 64:  # the factors' matrix by the entrywise formula of docs/monarch-math.md
        torch.testing.assert_close(monarch_dense_reference(M), F[:, perm], rtol=0, atol=1e-12)


def test_dft_monarch_shapes_and_trainable():
    M, _ = dft_monarch(32, (4, 8))  # non-square: k=8 blocks of 4x4, l=4 blocks of 8x8 (k != l)
    assert M.blkdiag1.shape == (8, 4, 4) and M.blkdiag2.shape == (4, 8, 8)
    x = torch.randn(2, 32, dtype=torch.complex64)
    M(x).abs().sum().backward()
    assert M.blkdiag1.grad is not None and M.blkdiag1.grad.dtype == torch.complex64


def test_dft_monarch_bad_args():
    with pytest.raises(ValueError, match="n must be a positive integer"):
        dft_monarch(0)
    with pytest.raises(ValueError, match=r"sizes must be a pair \(n1, n2\) with n1 \* n2 == n=12, got \(3, 5\)"):
        dft_monarch(12, (3, 5))
    with pytest.raises(ValueError, match=r"sizes\[1\] must be a positive integer"):
        dft_monarch(12, (3, 0))
    with pytest.raises(TypeError, match="dtype must be torch.complex64 or torch.complex128"):
        dft_monarch(16, dtype=torch.float32)
