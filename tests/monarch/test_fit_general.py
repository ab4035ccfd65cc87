"""fit_monarch for general factor shapes ``(k, q, p)`` / ``(l, s, r)`` (``k != l``, padded sizes)
against an optimum computed here with numpy, block by block from docs/monarch-math.md."""

import pytest
import torch
from helpers import independent_general_optimum, monarch_dense_reference
from hypothesis import given
from hypothesis import strategies as st

from structmat import Monarch, MonarchShape, fit_monarch, optimal_error


@st.composite
def general_shapes(draw):
    k, q, p, s = (draw(st.integers(1, 5)) for _ in range(4))
    l = draw(st.sampled_from([d for d in range(1, k * q + 1) if (k * q) % d == 0 and d * s <= 30]))  # noqa: E741
    in_f = draw(st.integers(1, k * p))  # below k*p: padded (whole blocks of padding included)
    out_f = draw(st.integers(1, l * s))
    return MonarchShape.from_factor_shapes((k, q, p), (l, s, k * q // l), in_f, out_f)


@given(general_shapes(), st.integers(0, 2**16))
def test_general_fit_reaches_independent_optimum(shape, seed):
    W = torch.randn(
        shape.out_features, shape.in_features, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)
    )
    m = fit_monarch(W, structure=shape)
    assert m.blkdiag1.shape == (shape.k, shape.q, shape.p) and m.blkdiag2.shape == (shape.l, shape.s, shape.r)
    expected = independent_general_optimum(W.numpy(), shape.k, shape.q, shape.p, shape.l, shape.s)
    fitted = monarch_dense_reference(m)  # the factors' matrix by the entrywise formula, not to_dense
    achieved = (torch.linalg.matrix_norm(W - fitted) / torch.linalg.matrix_norm(W)).item()
    assert abs(achieved - expected) <= 1e-9 * max(expected, 1.0)
    torch.testing.assert_close(m.to_dense().detach(), fitted, rtol=1e-10, atol=1e-10)
    assert abs(m.fit_error.item() - expected) <= 1e-9 * max(expected, 1.0)
    assert abs(optimal_error(W, shape).item() - expected) <= 1e-9 * max(expected, 1.0)


@pytest.mark.parametrize("method", ["svd", "gram"])
def test_more_reference_automatic_sizes_768(method):
    """The MoRe reference's automatic sizes for n = 768: blkdiag1 (32, 24, 24), blkdiag2 (24, 32, 32)."""
    shape = MonarchShape.from_factor_shapes((32, 24, 24), (24, 32, 32))
    assert (shape.in_features, shape.out_features) == (768, 768)
    W = torch.randn(768, 768, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    m = fit_monarch(W, structure=shape, method=method)
    expected = independent_general_optimum(W.numpy(), 32, 24, 24, 24, 32)
    assert abs(m.fit_error.item() - expected) <= 1e-8 * expected
    assert abs(optimal_error(W, shape).item() - expected) <= 1e-10 * expected


def test_general_fit_recovers_a_general_monarch():
    g = torch.Generator().manual_seed(3)
    target = Monarch.from_factors(
        torch.randn(6, 2, 5, dtype=torch.float64, generator=g),
        torch.randn(4, 7, 3, dtype=torch.float64, generator=g),
        28,
        26,
    )
    dense = monarch_dense_reference(target)
    m = fit_monarch(dense, structure=target.structure)
    assert m.fit_error.item() < 1e-10
    torch.testing.assert_close(monarch_dense_reference(m), dense)


def test_structure_and_nblocks_exclusive():
    W = torch.randn(12, 12)
    shape = MonarchShape.from_factor_shapes((4, 2, 3), (2, 6, 4))
    for kwargs in ({"nblocks": 4}, {"rank": 2}, {"nblocks": 2, "rank": 1}):
        with pytest.raises(ValueError, match="either structure or nblocks/rank"):
            fit_monarch(W, structure=shape, **kwargs)
        with pytest.raises(ValueError, match="either structure or nblocks/rank"):
            optimal_error(W, shape, **kwargs)
    with pytest.raises(ValueError, match=r"structure is for \(out, in\)=\(12, 12\) but W has shape \(12, 11\)"):
        fit_monarch(W[:, :11], structure=shape)
    with pytest.raises(TypeError, match="structure must be a MonarchShape"):
        fit_monarch(W, structure=((4, 2, 3), (2, 6, 4)))


def test_from_factor_shapes_bad_args():
    with pytest.raises(ValueError, match=r"blkdiag1_shape must be a tuple of 3"):
        MonarchShape.from_factor_shapes((4, 2), (2, 6, 4))
    with pytest.raises(ValueError, match=r"blkdiag2_shape\[2\] \(r\) must be a positive integer"):
        MonarchShape.from_factor_shapes((4, 2, 3), (2, 6, 0))
    with pytest.raises(ValueError, match=r"l\*r == k\*q"):
        MonarchShape.from_factor_shapes((4, 2, 3), (3, 6, 4))
    with pytest.raises(ValueError, match=r"in_features must be in \[1, k\*p=12\]"):
        MonarchShape.from_factor_shapes((4, 2, 3), (2, 6, 4), in_features=13)
