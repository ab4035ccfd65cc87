"""The fast Monarch multiply against the entrywise formula of docs/monarch-math.md
(tests/helpers.py: written from the formula with Python loops and no reshapes)."""

import pytest
import torch
from helpers import entrywise_monarch, multiply_by_steps

from structmat import Monarch, monarch_multiply


@pytest.mark.parametrize(
    "k,q,p,l,s,r",
    [
        (4, 1, 4, 4, 4, 1),  # MoRe rank 1
        (4, 2, 3, 4, 5, 2),  # MoRe rank 2, rectangular
        (4, 4, 4, 4, 4, 4),  # classic square Monarch n=16
        (2, 3, 2, 3, 2, 2),  # general: l != k
        (3, 4, 5, 2, 7, 6),  # general: l*r == k*q == 12
        (1, 2, 5, 1, 3, 2),  # nblocks 1 == low rank
    ],
)
def test_fast_multiply_equals_entrywise_formula(k, q, p, l, s, r):
    torch.manual_seed(k * 100 + q * 10 + p)
    b1 = torch.randn(k, q, p, dtype=torch.float64)
    b2 = torch.randn(l, s, r, dtype=torch.float64)
    M_ref = entrywise_monarch(b1, b2)
    x = torch.randn(3, k * p, dtype=torch.float64)
    torch.testing.assert_close(monarch_multiply(x, b1, b2), x @ M_ref.T)
    torch.testing.assert_close(Monarch.from_factors(b1, b2).to_dense(), M_ref)
    for row in x:
        torch.testing.assert_close(multiply_by_steps(row, b1, b2), row @ M_ref.T)


def test_nblocks_one_is_low_rank():
    m = Monarch(7, 5, nblocks=1, rank=2, dtype=torch.float64)
    B, A = m.blkdiag2[0], m.blkdiag1[0]  # (out, rank), (rank, in)
    torch.testing.assert_close(m.to_dense(), B @ A)


def test_padding_is_zero_pad_then_crop():
    """in=7, out=6, nblocks=2: factors of the padded 8x6 problem, columns beyond 7 dropped."""
    m = Monarch(7, 5, nblocks=2, rank=2, dtype=torch.float64)
    full = entrywise_monarch(m.blkdiag1.detach(), m.blkdiag2.detach())  # (6, 8)
    torch.testing.assert_close(m.to_dense().detach(), full[:5, :7])
