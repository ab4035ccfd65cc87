"""The permutation family of Dao et al. (2019) as index permutations, and its relaxation."""

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from structmat.butterfly import (
    RelaxedPermutation,
    bit_reversal_permutation,
    is_permutation,
    permutation_from_choices,
)


def reference_family_permutation(n, choices):
    """Plain-list version of the family: per level (largest block first) even/odd, reversals."""
    perm = list(range(n))
    st_ = n // 2
    for eo, r1, r2 in choices:
        new = []
        for start in range(0, n, 2 * st_):
            block = perm[start : start + 2 * st_]
            if eo:
                block = block[0::2] + block[1::2]
            first, second = block[:st_], block[st_:]
            new += (first[::-1] if r1 else first) + (second[::-1] if r2 else second)
        perm = new
        st_ //= 2
    return perm


@given(st.sampled_from([2, 4, 8, 16, 32]), st.data())
@settings(max_examples=40, deadline=None)
def test_family_permutation_matches_plain_lists(n, data):
    m = n.bit_length() - 1
    choices = data.draw(st.lists(st.tuples(*[st.integers(0, 1)] * 3), min_size=m - 1, max_size=m - 1))
    perm = permutation_from_choices(n, torch.tensor(choices, dtype=torch.long).reshape(m - 1, 3))
    assert perm.tolist() == reference_family_permutation(n, choices)
    assert bool(is_permutation(perm))


def test_family_contains_bit_reversal_and_the_dct_order():
    n = 16
    assert torch.equal(permutation_from_choices(n, torch.tensor([[1, 0, 0]] * 3)), bit_reversal_permutation(n))
    # the order of Makhoul's DCT-via-FFT at the top level: even entries up, odd entries down
    top = permutation_from_choices(n, torch.tensor([[1, 0, 1], [0, 0, 0], [0, 0, 0]]))
    assert top.tolist() == [0, 2, 4, 6, 8, 10, 12, 14, 15, 13, 11, 9, 7, 5, 3, 1]


def test_is_permutation():
    assert is_permutation(torch.tensor([[2, 0, 1], [0, 0, 1]])).tolist() == [True, False]
    assert not bool(is_permutation(torch.tensor([0.0, 1.0])))


def test_relaxed_permutation_vertices_are_the_family():
    n = 16
    for choice in itertools.product((0, 1), repeat=3):
        choices = torch.tensor([choice, (1, 0, 0), (0, 1, 1)])
        rp = RelaxedPermutation.from_choices(choices, n, sharpness=60.0, dtype=torch.float64)
        x = torch.randn(3, n, dtype=torch.float64)
        hard = rp.hard()
        assert hard.tolist() == reference_family_permutation(n, choices.tolist())
        torch.testing.assert_close(rp(x), x[:, hard])


def test_relaxed_permutation_is_doubly_stochastic_and_differentiable():
    rp = RelaxedPermutation(8, dtype=torch.float64, init_scale=1.0)
    P = rp(torch.eye(8, dtype=torch.float64))  # rows: relaxed images of the basis vectors
    torch.testing.assert_close(P.sum(0), torch.ones(8, dtype=torch.float64))
    torch.testing.assert_close(P.sum(1), torch.ones(8, dtype=torch.float64))
    P.square().sum().backward()
    assert rp.logits.grad is not None and bool(rp.logits.grad.abs().sum() > 0)


def test_bad_arguments():
    with pytest.raises(ValueError, match="n must be a power of two"):
        permutation_from_choices(6, torch.zeros(1, 3))
    with pytest.raises(ValueError, match="choices must have shape"):
        permutation_from_choices(8, torch.zeros(3, 3))
