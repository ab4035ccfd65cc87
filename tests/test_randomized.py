"""The randomized range finder both fits share, against exact SVDs (no timing)."""

import pytest
import torch
from helpers import spectrum_suite

from structmat.randomized import prefer_randomized, randomized_svd


def test_exactly_low_rank_matrix_is_recovered_without_power_iterations():
    g = torch.Generator().manual_seed(0)
    A = torch.randn(200, 3, generator=g, dtype=torch.float64) @ torch.randn(3, 150, generator=g, dtype=torch.float64)
    U, S, Vh = randomized_svd(A, 3, niter=0, oversample=2)
    assert U.shape == (200, 3) and S.shape == (3,) and Vh.shape == (3, 150)
    torch.testing.assert_close((U * S) @ Vh, A, rtol=0, atol=1e-10 * A.abs().max().item())
    torch.testing.assert_close(S, torch.linalg.svdvals(A)[:3], rtol=1e-10, atol=0)


def test_outputs_are_orthonormal_and_sorted_and_near_the_exact_triplets():
    A = spectrum_suite(120, 90)["exp(-i/10)"]
    U, S, Vh = randomized_svd(A, 6)
    eye = torch.eye(6, dtype=A.dtype)
    torch.testing.assert_close(U.mT @ U, eye, rtol=0, atol=1e-12)
    torch.testing.assert_close(Vh @ Vh.mT, eye, rtol=0, atol=1e-12)
    assert bool((S[:-1] >= S[1:]).all())
    torch.testing.assert_close(S, torch.linalg.svdvals(A)[:6], rtol=1e-7, atol=0)  # a decaying spectrum (seen: 2e-9)


def test_a_strided_view_is_read_in_place_and_gives_the_contiguous_result():
    big = torch.randn(300, 200, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    view = big.T[10:170, ::2]  # (160, 150), no unit stride in either dim
    before = big.clone()
    U, S, Vh = randomized_svd(view, 4, seed=5)
    assert torch.equal(big, before)
    U2, S2, Vh2 = randomized_svd(view.contiguous(), 4, seed=5)
    torch.testing.assert_close(S, S2, rtol=1e-12, atol=0)
    torch.testing.assert_close(U * S @ Vh, U2 * S2 @ Vh2, rtol=0, atol=1e-12)


def test_batched_over_leading_dims_like_one_matrix_at_a_time():
    A = torch.stack([torch.stack(list(spectrum_suite(64, 48, seed=s).values())) for s in range(2)])  # (2, 4, 64, 48)
    U, S, Vh = randomized_svd(A, 5)
    assert U.shape == (2, 4, 64, 5) and S.shape == (2, 4, 5) and Vh.shape == (2, 4, 5, 48)
    exact = torch.linalg.svdvals(A)[..., :5]
    assert bool((S <= exact * (1 + 1e-12)).all())  # never above the true singular values
    # the two decaying spectra are found to 1e-8; the flat ones (Gaussian, noise) to 5%
    torch.testing.assert_close(S[:, 2:], exact[:, 2:], rtol=1e-8, atol=0)
    torch.testing.assert_close(S[:, :2], exact[:, :2], rtol=5e-2, atol=0)


def test_sketch_as_wide_as_the_matrix_is_exact():
    A = spectrum_suite(40, 30)["gaussian"]
    _, S, _ = randomized_svd(A, 25, oversample=10, niter=0)  # 35 > 30: the whole range
    torch.testing.assert_close(S, torch.linalg.svdvals(A)[:25], rtol=1e-10, atol=0)


def test_seed_reproducible_and_global_rng_untouched():
    A = spectrum_suite(80, 60)["gaussian"]
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    a, b, c = (randomized_svd(A, 3, niter=0, seed=s) for s in (7, 7, 8))
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not torch.equal(a[0], c[0])


def test_bad_arguments_are_named():
    A = torch.randn(10, 8)
    for k in (0, 9):
        with pytest.raises(ValueError, match=rf"k must be in \[1, min\(m, n\)=8\], got {k}"):
            randomized_svd(A, k)
    with pytest.raises(ValueError, match="oversample must be an integer >= 0, got -1"):
        randomized_svd(A, 2, oversample=-1)
    with pytest.raises(ValueError, match="niter must be an integer >= 0, got 1.5"):
        randomized_svd(A, 2, niter=1.5)
    with pytest.raises(TypeError, match="seed must be an int or None, got 'a'"):
        randomized_svd(A, 2, seed="a")


@pytest.mark.parametrize(
    "k,m,n,expected",
    [
        (1, 256, 256, False),  # sketch 21: 20 * 21 > 256
        (5, 512, 512, True),  # 20 * 25 <= 512
        (6, 512, 512, False),
        (31, 1024, 1024, True),  # 20 * 51 <= 1024
        (32, 1024, 1024, False),
        (2, 1024, 4096, True),  # a tall block: the short side decides
        (2, 419, 4096, False),
    ],
)
def test_auto_rule_is_the_documented_ratio(k, m, n, expected):
    """With the defaults (oversample 20, niter 4): ``20 * (k + 20) <= min(m, n)``."""
    assert prefer_randomized(k, m, n) is expected
    assert prefer_randomized(k, n, m) is expected  # only the short side counts
    assert prefer_randomized(1, 300, 300, oversample=0, niter=1) is True  # 8 * 1 <= 300
    assert prefer_randomized(1, 255, 255, oversample=0, niter=1) is False  # under AUTO_MIN_SIZE
