"""Bad input gets a clear error that names the argument."""

import pytest
import torch

from structmat import Butterfly, LowRank, Monarch


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        ({"rank": 0}, ValueError, "rank must be a positive integer"),
        ({"rank": -2}, ValueError, "rank must be a positive integer"),
        ({"rank": 1.5}, ValueError, "rank must be a positive integer"),
        ({"rank": 17}, ValueError, "rank=17 is larger"),
        ({"nblocks": 0}, ValueError, "nblocks must be a positive integer"),
        ({"nblocks": 32}, ValueError, "nblocks=32 does not fit"),
        ({"dtype": torch.int64}, TypeError, "dtype must have a floating-point dtype"),
        ({"init2": "ones"}, ValueError, "init2 must be"),
    ],
)
def test_monarch_bad_args(kwargs, exc, match):
    args = {"in_features": 16, "out_features": 24, "nblocks": 4, "rank": 1} | kwargs
    with pytest.raises(exc, match=match):
        Monarch(**args)


def test_nblocks_that_leaves_empty_block_refused():
    # in=5, nblocks=4 -> blocks of 2 columns cover only 3 blocks: the 4th would be padding
    with pytest.raises(ValueError, match="nblocks=4 does not fit in_features=5"):
        Monarch(5, 8, nblocks=4)


def test_from_factors_mismatch():
    with pytest.raises(ValueError, match="l\\*r == k\\*q"):
        Monarch.from_factors(torch.randn(2, 3, 4), torch.randn(2, 5, 2))
    with pytest.raises(TypeError, match="blkdiag1 must have a floating-point"):
        Monarch.from_factors(torch.ones(2, 1, 4, dtype=torch.long), torch.randn(2, 5, 1))


def test_lowrank_bad_args():
    with pytest.raises(ValueError, match="rank must be a positive integer"):
        LowRank(4, 4, 0)
    with pytest.raises(ValueError, match="rank=5 is larger"):
        LowRank(4, 8, 5)
    with pytest.raises(ValueError, match="in_features must be a positive integer"):
        LowRank(0, 4, 1)


def test_butterfly_bad_args():
    with pytest.raises(ValueError, match="init must be"):
        Butterfly(8, init="zeros")
    with pytest.raises(ValueError, match="out_features must be a positive integer"):
        Butterfly(8, 0)


@pytest.mark.parametrize("op", [Monarch(8, 8, 2, 1), LowRank(8, 8, 2), Butterfly(8)])
def test_forward_wrong_input(op):
    with pytest.raises(ValueError, match="in_features=8"):
        op(torch.randn(3, 7))
    with pytest.raises(TypeError, match="x must have a floating-point or complex dtype"):
        op(torch.ones(3, 8, dtype=torch.int32))
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        op([1.0] * 8)


def test_batched_forward_shape_checked():
    m = Monarch(8, 8, 2, 1, batch_shape=(3,))
    with pytest.raises(ValueError, match="batch_shape"):
        m(torch.randn(8))
    with pytest.raises(ValueError, match="batch_shape"):
        m(torch.randn(2, 4, 8))


def test_addmm_rejects_bad_y():
    m = Monarch(8, 12, 2, 2)
    x = torch.randn(3, 8)
    with pytest.raises(ValueError, match="y must have the shape of forward"):
        m.addmm(torch.randn(3, 11), x)
    with pytest.raises(TypeError, match="y must be a torch.Tensor"):
        m.addmm([1.0], x)
    with pytest.raises(ValueError, match="in_features"):
        m.addmm(torch.randn(3, 12), torch.randn(3, 7))
