"""Tests every registered structure family gets from the registry alone (#28 item 4): the
StructuredLinearTestCase battery on each of its examples against the independent reference in
tests/helpers.py, its fit against its optimal error, its rank formula against a random
instance, and the adapter hook (a zero update that trains). A family registered without a
reference here fails ``test_every_family_has_an_independent_reference``."""

import pytest
import torch
from helpers import DENSE_REFERENCES

import structmat as sm
from structmat.registry import families, get_structure
from structmat.testing import family_test_case


def _reference(family):
    def missing(op):
        raise AssertionError(f"no independent reference for {family.name!r}: add one to tests/helpers.py")

    return DENSE_REFERENCES.get(family.module, missing)


for _family in families():  # the battery, one class per example (collected at import: built-in families)
    for _i in range(len(_family.examples)):
        _case = family_test_case(_family, _i, _reference(_family))
        globals()[_case.__name__] = _case
del _family, _i, _case

EXAMPLES = [(f.name, i) for f in families() for i in range(len(f.examples))]
UNBATCHED = [(name, i) for name, i in EXAMPLES if "batch_shape" not in get_structure(name).examples[i][2]]


def _example(name, i):
    family = get_structure(name)
    in_f, out_f, kwargs = family.examples[i]
    return family, in_f, out_f, kwargs


def test_the_built_in_families_are_registered():
    assert {"monarch", "lowrank", "butterfly", "kronecker"} <= set(sm.structures())


@pytest.mark.parametrize("name", sm.structures())
def test_every_family_has_an_independent_reference_and_examples(name):
    family = get_structure(name)
    assert family.module in DENSE_REFERENCES, f"add an independent reference for {name} to tests/helpers.py"
    assert family.examples, f"{name} registers no examples: the battery would not run"


@pytest.mark.parametrize("name,i", [e for e in UNBATCHED if get_structure(e[0]).optimal_error is not None])
def test_fit_meets_optimal_error(name, i):
    """The fit reaches the optimum computed without it, on a random W and on a member (exact)."""
    family, in_f, out_f, hp = _example(name, i)
    W = torch.randn(out_f, in_f, dtype=torch.float64, generator=torch.Generator().manual_seed(i))
    fitted = family.fit(W, **hp)
    optimum = float(family.optimal_error(W, **hp))
    true = float(torch.linalg.matrix_norm(W - _reference(family)(fitted)) / torch.linalg.matrix_norm(W))
    assert abs(float(fitted.fit_error) - optimum) <= 1e-10 * optimum + 1e-14
    assert abs(true - optimum) <= 1e-10 * optimum + 1e-14
    torch.manual_seed(i)
    member = _reference(family)(family.build(in_f, out_f, **hp, dtype=torch.float64))
    assert float(family.optimal_error(member, **hp)) < 1e-10 and float(family.fit(member, **hp).fit_error) < 1e-10


@pytest.mark.parametrize("name", [f.name for f in families() if f.optimal_error is None])
def test_fit_without_optimum_reports_its_true_error(name):
    family, in_f, out_f, hp = _example(name, 0)
    W = torch.randn(out_f, in_f, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    fitted = family.fit(W, **hp)
    true = float(torch.linalg.matrix_norm(W - _reference(family)(fitted)) / torch.linalg.matrix_norm(W))
    assert abs(float(fitted.fit_error) - true) < 1e-10
    with pytest.raises(ValueError, match="has no optimal error"):
        sm.optimal_error(W, name)


@pytest.mark.parametrize("name,i", UNBATCHED)
def test_rank_capacity_is_the_rank_of_a_random_member(name, i):
    family, in_f, out_f, hp = _example(name, i)
    torch.manual_seed(i)
    member = family.build(in_f, out_f, **hp, dtype=torch.float64)
    assert int(torch.linalg.matrix_rank(_reference(family)(member))) == family.rank_capacity(in_f, out_f, **hp)
    assert member.max_rank == family.rank_capacity(in_f, out_f, **hp)


@pytest.mark.parametrize("name,i", EXAMPLES)
def test_update_hook_starts_at_zero_and_trains(name, i):
    """build_update: what a structure-generic adapter asks for (ΔW = 0 at the start, a gradient)."""
    family, in_f, out_f, kwargs = _example(name, i)
    update = family.build_update(in_f, out_f, **kwargs, dtype=torch.float64)
    assert isinstance(update, family.module) and update.shape == (*kwargs.get("batch_shape", ()), out_f, in_f)
    assert bool((_reference(family)(update) == 0).all())
    x = torch.randn(*update.batch_shape, 4, in_f, dtype=torch.float64)
    base = torch.randn(*update.batch_shape, 4, out_f, dtype=torch.float64)
    assert torch.equal(update.addmm(base, x), base)
    (update(x) * torch.randn(*update.batch_shape, 4, out_f, dtype=torch.float64)).sum().backward()
    assert any(p.grad is not None and bool(p.grad.abs().max() > 0) for p in update.parameters())


@pytest.mark.parametrize("name", sm.structures())
def test_largest_within_budget_is_the_largest(name):
    """The budget search returns a member within the budget whose next size is not."""
    family, in_f, out_f, hp = _example(name, 0)
    for variant in family.variants(in_f, out_f, **family.variant_options):
        for budget in (1, 50, 200, 10**6):
            chosen = family.largest_within_budget(in_f, out_f, budget, **variant)
            smallest = family.num_params(in_f, out_f, **family.smallest(**variant))
            assert (chosen is None) == (smallest > budget)
            if chosen is None or family.size is None:
                continue
            assert family.num_params(in_f, out_f, **chosen) <= budget
            bigger = chosen[family.size] + 1
            if bigger <= family.largest_size(in_f, out_f, **variant):
                assert family.num_params(in_f, out_f, **{**chosen, family.size: bigger}) > budget
