import math

import numpy as np
import pytest
import scipy.linalg
import torch
from helpers import butterfly_dense_reference

from structmat import Butterfly, dft_butterfly, hadamard_butterfly
from structmat.butterfly import bit_reversal_permutation, is_permutation


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


# -- permutations, blocks, real output ---------------------------------------------------------


def test_relaxation_learns_the_bit_reversal_of_the_fft():
    """With the FFT's twiddles fixed, gradient on the relaxed input permutation finds the bit reversal."""
    torch.manual_seed(0)
    n = 16
    F = torch.fft.fft(torch.eye(n, dtype=torch.complex128), dim=0, norm="ortho")
    bf = Butterfly(n, complex=True, in_perm="learn", init="identity", dtype=torch.float64)
    with torch.no_grad():
        bf.twiddle.copy_(dft_butterfly(n, normalized=True, dtype=torch.float64).twiddle)
    opt = torch.optim.Adam([bf.in_relaxed.logits], lr=0.1)
    for _ in range(200):
        opt.zero_grad()
        (bf.to_dense() - F).abs().square().sum().backward()
        opt.step()
    bf.round_permutations()
    assert torch.equal(bf.in_perm, bit_reversal_permutation(n))
    assert [name for name, _ in bf.named_parameters()] == ["twiddle"]  # the logits are gone
    torch.testing.assert_close(bf.to_dense().detach(), F)


@pytest.mark.parametrize("nblocks", [1, 2, 3])
@pytest.mark.parametrize("increasing", [True, False])
def test_butterfly_with_permutations_equals_factor_product(nblocks, increasing):
    torch.manual_seed(nblocks)
    n = 8
    bf = Butterfly(
        n, nblocks=nblocks, increasing_stride=increasing, complex=True, in_perm=torch.randperm(n),
        out_perm=torch.randperm(n), init="randn", dtype=torch.float64,
    )  # fmt: skip
    torch.testing.assert_close(bf.to_dense().detach(), butterfly_dense_reference(bf))
    assert bf.num_params == 2 * n * 3 * nblocks


def test_learned_permutations_round_to_index_permutations():
    torch.manual_seed(0)
    n = 16
    bf = Butterfly(n, nblocks=2, in_perm="learn", out_perm="learn", batch_shape=(3,), dtype=torch.float64)
    assert bf.learns_permutations and bf.num_params == 3 * (2 * 2 * n * 4 + 2 * 3 * 3)
    bf.round_permutations()
    assert not bf.learns_permutations and bf.num_params == 3 * 2 * 2 * n * 4
    for perm in (bf.in_perm, bf.out_perm):
        assert perm.dtype == torch.long and perm.shape == (3, n) and bool(is_permutation(perm).all())
    torch.testing.assert_close(bf.to_dense().detach(), butterfly_dense_reference(bf))


def test_real_output_is_the_real_part_and_real_linear():
    torch.manual_seed(0)
    bf = Butterfly(8, complex=True, real_output=True, nblocks=2, init="randn", dtype=torch.float64)
    dense = bf.to_dense().detach()
    assert dense.dtype == torch.float64 == bf.dtype
    torch.testing.assert_close(dense, butterfly_dense_reference(bf))
    z = torch.randn(4, 8, dtype=torch.complex128)
    torch.testing.assert_close(bf(z), z @ dense.T.to(z.dtype))  # Re(M) applied to both parts


def test_butterfly_permutation_errors():
    with pytest.raises(ValueError, match="in_perm must hold permutations"):
        Butterfly(8, in_perm=torch.tensor([0, 0, 1, 2, 3, 4, 5, 6]))
    with pytest.raises(ValueError, match="out_perm must have shape"):
        Butterfly(8, out_perm=torch.arange(4))
    with pytest.raises(ValueError, match="in_perm must be None, an index tensor or 'learn'"):
        Butterfly(8, in_perm="lern")
    with pytest.raises(ValueError, match="either bit_reversal=True or in_perm"):
        Butterfly(8, bit_reversal=True, in_perm=torch.arange(8))
    with pytest.raises(ValueError, match="real_output=True needs complex=True"):
        Butterfly(8, real_output=True)
    with pytest.raises(ValueError, match="nblocks must be a positive integer"):
        Butterfly(8, nblocks=0)
