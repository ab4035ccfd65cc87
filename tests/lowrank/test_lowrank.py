"""LowRank and fit_lowrank against independent references (the B @ A formula, numpy's SVD)."""

import math

import numpy as np
import torch
from helpers import lowrank_dense_reference
from hypothesis import given
from hypothesis import strategies as st

from structmat import LowRank, fit_lowrank, optimal_error

dtypes = st.sampled_from([torch.float32, torch.float64])
lead_dims = st.lists(st.integers(1, 3), min_size=0, max_size=2)


def close(a, b, dtype):
    tol = 1e-10 if dtype == torch.float64 else 2e-4
    torch.testing.assert_close(a, b, rtol=tol, atol=tol * max(1.0, float(b.detach().abs().max())))


@given(st.integers(1, 30), st.integers(1, 30), st.data(), lead_dims, dtypes)
def test_lowrank_properties(in_f, out_f, data, lead, dtype):
    rank = data.draw(st.integers(1, min(in_f, out_f)))
    lr = LowRank(in_f, out_f, rank, dtype=dtype)
    x = torch.randn(*lead, in_f, dtype=dtype)
    reference = lowrank_dense_reference(lr)
    close(lr(x), x @ reference.T, dtype)
    assert lr.num_params == rank * (in_f + out_f)
    assert torch.linalg.matrix_rank(reference) == lr.max_rank == rank


@given(st.integers(2, 30), st.integers(2, 30), st.data())
def test_fit_lowrank_optimal_and_recovers(out_f, in_f, data):
    rank = data.draw(st.integers(1, min(out_f, in_f)))
    W = torch.randn(out_f, in_f, dtype=torch.float64)
    sv = np.linalg.svd(W.numpy(), compute_uv=False)
    expected = math.sqrt(float(np.sum(sv[rank:] ** 2))) / float(np.linalg.norm(W.numpy()))
    lr = fit_lowrank(W, rank)
    assert abs(lr.fit_error.item() - expected) <= 1e-8 * max(expected, 1e-8) + 1e-12
    low = torch.randn(out_f, rank, dtype=torch.float64) @ torch.randn(rank, in_f, dtype=torch.float64)
    assert fit_lowrank(low, rank).fit_error.item() < 1e-6


def test_fit_lowrank_randomized_near_optimal_on_decaying_spectrum():
    torch.manual_seed(0)
    U, _ = torch.linalg.qr(torch.randn(300, 300, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(200, 200, dtype=torch.float64))
    S = torch.exp(-torch.arange(200, dtype=torch.float64) / 10)
    W = U[:, :200] @ torch.diag(S) @ V.T
    opt = optimal_error(W, "lowrank", rank=20).item()
    rnd = fit_lowrank(W, 20, method="randomized").fit_error.item()
    assert opt <= rnd <= 1.05 * opt
    low = torch.randn(300, 5, dtype=torch.float64) @ torch.randn(5, 200, dtype=torch.float64)
    assert fit_lowrank(low, 5, method="randomized").fit_error.item() < 1e-6
