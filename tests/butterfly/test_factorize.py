"""The closed-form factorization: exact on matrices of the structure, None on others."""

import pytest
import torch
from helpers import butterfly_dense_reference

from structmat import Butterfly
from structmat.butterfly import permutation_from_choices
from structmat.butterfly.factorize import search


def module_from(cand, nblocks, n, k=0):
    """The searched factors as a module: ``K = T[r][:, c]`` means in_perm = c, out_perm = argsort(r)."""
    bf = Butterfly(
        n, nblocks=nblocks, increasing_stride=False, complex=True, init="identity", dtype=torch.float64,
        in_perm=permutation_from_choices(n, cand.in_choices[k]),
        out_perm=permutation_from_choices(n, cand.out_choices[k]).argsort(),
    )  # fmt: skip
    with torch.no_grad():
        bf.twiddle.copy_(cand.twiddle[k])
    return bf


@pytest.mark.parametrize("nblocks", [1, 2])
@pytest.mark.parametrize("shared", [True, False])
def test_recovers_a_random_member_of_the_structure(nblocks, shared):
    torch.manual_seed(nblocks + 2 * shared)
    n = 32
    g = torch.Generator().manual_seed(7)
    choices = torch.randint(0, 2, (1 if shared else 4, 3), generator=g).expand(4, 3)
    target = Butterfly(  # the searched form: input permutation from the family, output its inverse's
        n, nblocks=nblocks, increasing_stride=False, complex=True, init="randn", dtype=torch.float64,
        in_perm=permutation_from_choices(n, choices), out_perm=permutation_from_choices(n, choices.flip(0)).argsort(),
    )  # fmt: skip
    T = butterfly_dense_reference(target)
    # exact up to rounding: ten random non-unitary factors lose a few digits (fit_butterfly's bar is looser)
    cand = search(T, nblocks, shared=shared, exact_tol=1e-20)
    assert cand is not None and float(cand.residual[0]) < 1e-20
    found = butterfly_dense_reference(module_from(cand, nblocks, n))
    assert float(torch.linalg.matrix_norm(found - T) / torch.linalg.matrix_norm(T)) < 1e-10


@pytest.mark.parametrize("seed", [2, 4])
@pytest.mark.parametrize("nblocks", [1, 2])
def test_per_level_search_finds_members_whose_choice_is_ambiguous_at_a_depth(nblocks, seed):
    """Regression: trying the previous depth's choice first missed these (nblocks=1 seed 4, 2 seed 2)."""
    torch.manual_seed(seed)
    n = 32
    g = torch.Generator().manual_seed(7 + seed)
    choices = torch.randint(0, 2, (4, 3), generator=g)
    target = Butterfly(
        n, nblocks=nblocks, increasing_stride=False, complex=True, init="randn", dtype=torch.float64,
        in_perm=permutation_from_choices(n, choices), out_perm=permutation_from_choices(n, choices.flip(0)).argsort(),
    )  # fmt: skip
    T = butterfly_dense_reference(target)
    cand = search(T, nblocks, shared=False, exact_tol=1e-20)
    assert cand is not None
    found = butterfly_dense_reference(module_from(cand, nblocks, n))
    assert float(torch.linalg.matrix_norm(found - T) / torch.linalg.matrix_norm(T)) < 1e-10


@pytest.mark.parametrize("nblocks", [1, 2])
def test_gaussian_is_no_member(nblocks):
    T = torch.randn(32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert search(T, nblocks) is None and search(T, nblocks, shared=False) is None


def test_only_one_or_two_blocks():
    with pytest.raises(ValueError, match="nblocks must be 1 or 2"):
        search(torch.eye(8), 3)
