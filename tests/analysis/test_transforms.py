"""The 'which transforms each structure recovers' table: its targets, its numbers, its markdown."""

import math

import numpy as np
import pytest
import scipy.fft
import scipy.linalg
import torch

from structmat import optimal_error
from structmat.analysis import RecoveryRow, recovery_markdown, recovery_table, transform_suite
from structmat.analysis.transforms import BUTTERFLY_COLUMNS, recovery_columns


def test_transform_suite_matches_references():
    n = 16
    s = transform_suite(n)
    eye = torch.eye(n, dtype=torch.float64)
    for name in ("DFT", "DCT-II", "DST-II", "Hartley", "Walsh-Hadamard"):  # all orthogonal / unitary
        W = s[name]
        torch.testing.assert_close(W.conj().T @ W, eye.to(W.dtype))
    x = np.random.default_rng(0).standard_normal(n)
    np.testing.assert_allclose(s["DCT-II"].numpy() @ x, scipy.fft.dct(x, norm="ortho"), atol=1e-12)
    np.testing.assert_allclose(s["DFT"].numpy() @ x, np.fft.fft(x, norm="ortho"), atol=1e-12)
    c = s["circulant convolution"][:, 0].numpy()
    np.testing.assert_allclose(s["circulant convolution"].numpy(), scipy.linalg.circulant(c))
    torch.testing.assert_close(s["Hartley"], s["Hartley"].T)
    with pytest.raises(ValueError, match="n must be a power of two"):
        transform_suite(12)


def test_recovery_table_numbers_are_checked_independently():
    rows = recovery_table(16, targets=["DCT-II", "Gaussian"], steps=100, progress=False)
    by = {(r.target, r.structure): r for r in rows}
    assert {s for _, s in by} == set(recovery_columns())  # every registered family with an optimum
    dct = by["DCT-II", BUTTERFLY_COLUMNS[0]]
    assert dct.recovered and dct.rel_error < 1e-4 and dct.params == 2 * 2 * 16 * 4  # B B*, real twiddles
    assert not by["Gaussian", BUTTERFLY_COLUMNS[0]].recovered and by["Gaussian", BUTTERFLY_COLUMNS[0]].rel_error > 0.3
    W = transform_suite(16)["Gaussian"].numpy()
    for target in ("DCT-II", "Gaussian"):
        budget = by[target, BUTTERFLY_COLUMNS[0]].params
        low, mon, kron = by[target, "low rank"], by[target, "Monarch"], by[target, "Kronecker"]
        assert low.params <= budget and mon.params <= budget and kron.params <= budget
        if target == "Gaussian":  # the low-rank optimum from numpy's singular values
            r = int(low.detail.split()[-1])
            sv = np.linalg.svd(W, compute_uv=False)
            assert abs(low.rel_error - math.sqrt((sv[r:] ** 2).sum() / (sv**2).sum())) < 1e-12
    text = recovery_markdown(rows)
    assert text.splitlines()[0].startswith("| target (n) | butterfly (learned permutations) |")
    assert "| DCT-II (16) | **" in text and "| Gaussian (16) | **" not in text


def test_recovery_table_counts_complex_parameters_twice():
    rows = recovery_table(16, targets=["DFT"], steps=50, progress=False)
    learned = next(r for r in rows if r.structure == BUTTERFLY_COLUMNS[0])
    assert learned.recovered and learned.params == 2 * (2 * 16 * 4)  # complex twiddles: 2 reals each
    low = next(r for r in rows if r.structure == "low rank")
    rank = int(low.detail.split()[-1])
    assert low.params == 2 * rank * 32 and abs(low.rel_error - math.sqrt(1 - rank / 16)) < 1e-12  # unitary


def test_optimal_errors_accept_complex_matrices():
    W = torch.randn(12, 12, dtype=torch.float64)
    for structure, kw in (("lowrank", {"rank": 3}), ("monarch", {"nblocks": 3, "rank": 2})):
        real = optimal_error(W, structure, **kw)
        torch.testing.assert_close(optimal_error((1 + 2j) * W.to(torch.complex128), structure, **kw), real)


def test_recovery_table_bad_target_name():
    with pytest.raises(ValueError, match="targets must be names"):
        recovery_table(8, targets=["FFT"])
    assert recovery_markdown([]) == ""
    row = RecoveryRow("x", 8, "low rank", 16, 0.5, False, "rank 1", 0.0)
    assert recovery_markdown([row]).splitlines()[-1] == "| x (8) | 5.0e-01 (16; rank 1) |"  # only columns it has
