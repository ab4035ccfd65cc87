"""A reusable pytest test case for any :class:`~structmat.StructuredLinear`.

In the spirit of ``linear_operator``'s test cases: subclass it, say how to build the structure
(:meth:`make`) and how to compute its dense matrix *independently* of the structure's own code
(:meth:`reference_dense`: an entrywise formula, a plain loop, scipy), and the structure is
checked against that reference: forward, ``to_dense``, gradients, rank, errors::

    from structmat.testing import StructuredLinearTestCase

    class TestMyStructure(StructuredLinearTestCase):
        dtypes = (torch.float64,)  # optional: the dtypes to run (default float32 and float64;
                                   # float16 and bfloat16 work too, with looser tolerances)

        def make(self, dtype):
            return MyStructure(12, 20, dtype=dtype)

        def reference_dense(self, op):
            return my_formula(op.weight_a, op.weight_b)  # (*batch_shape, out, in)

Comparing ``forward`` with the structure's own ``to_dense()`` alone proves little: ``to_dense``
is computed by the same ``forward``, so a wrong permutation passes. The reference must not call
the structure.

A registered family (:class:`~structmat.registry.StructureFamily`) gets the whole case for each
of its ``examples`` from :func:`family_test_case`: ``TestMine = family_test_case(MINE, 0, my_formula)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch

from .base import StructuredLinear
from .registry import StructureFamily


def assert_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Tolerances scaled to the dtype and to the size of the expected values."""
    real = actual.real.dtype if actual.is_complex() else actual.dtype
    rtol = {torch.float64: 1e-10, torch.float32: 1e-4}.get(real, 1e-2)
    atol = rtol * max(1.0, float(expected.detach().abs().max()) if expected.numel() else 1.0)
    torch.testing.assert_close(actual, expected.to(actual.dtype), rtol=rtol, atol=atol)


class StructuredLinearTestCase:
    """Checks every structure must pass. Override :meth:`make` and :meth:`reference_dense`."""

    dtypes: tuple[torch.dtype, ...] = (torch.float32, torch.float64)

    def make(self, dtype: torch.dtype) -> StructuredLinear:
        raise NotImplementedError

    def reference_dense(self, op: StructuredLinear) -> torch.Tensor:
        """The dense matrix ``(*batch_shape, out, in)`` of ``op``, computed without its code."""
        raise NotImplementedError

    def expected_num_params(self, op: StructuredLinear) -> int | None:
        """The parameter count from the structure's formula (None: not checked)."""
        return None

    def pytest_generate_tests(self, metafunc) -> None:  # a subclass's own ``dtypes`` count
        if "dtype" in metafunc.fixturenames:
            metafunc.parametrize("dtype", self.dtypes, ids=[str(d).removeprefix("torch.") for d in self.dtypes])

    @pytest.fixture
    def op(self, dtype) -> StructuredLinear:
        torch.manual_seed(0)
        return self.make(dtype)

    def _x(self, op: StructuredLinear, *lead: int) -> torch.Tensor:
        real = op.dtype.to_real() if op.dtype.is_complex else op.dtype
        return torch.randn(*op.batch_shape, *lead, op.in_features, dtype=real)

    def test_forward_equals_reference(self, op):
        x = self._x(op, 5) if op.batch_shape else self._x(op, 2, 3, 5)
        reference = self.reference_dense(op).detach()
        y = op(x)
        assert y.shape == (*x.shape[:-1], op.out_features)
        assert_close(y, x.to(reference.dtype) @ reference.mT)

    def test_to_dense_equals_reference(self, op):
        dense = op.to_dense()
        assert dense.shape == op.shape and dense.device == op.device and dense.dtype == op.dtype
        assert_close(dense, self.reference_dense(op).detach())

    def test_num_params(self, op):
        expected = self.expected_num_params(op)
        if expected is None:
            pytest.skip("no parameter-count formula given (expected_num_params)")
        assert op.num_params == expected

    def test_rank_at_most_max_rank(self, op):
        reference = self.reference_dense(op).detach()  # rank tolerance from its own dtype's epsilon
        rtol = torch.finfo(reference.real.dtype if reference.is_complex() else reference.dtype).eps * max(op.shape[-2:])
        work = reference.to(torch.float32) if reference.dtype in (torch.float16, torch.bfloat16) else reference
        assert bool((torch.linalg.matrix_rank(work, rtol=rtol) <= op.max_rank).all())

    def test_gradcheck_float64(self):
        torch.manual_seed(0)
        op = self.make(torch.float64)
        names = [name for name, _ in op.named_parameters()]
        x = self._x(op, 3).requires_grad_(True)
        params = tuple(p.detach().clone().requires_grad_(True) for p in op.parameters())

        def f(x, *values):
            return torch.func.functional_call(op, dict(zip(names, values, strict=True)), (x,))

        assert torch.autograd.gradcheck(f, (x, *params))

    def test_wrong_last_dim_rejected(self, op):
        x = torch.randn(*op.batch_shape, 2, op.in_features + 1)
        with pytest.raises(ValueError, match="in_features"):
            op(x)

    def test_integer_input_rejected(self, op):
        x = torch.ones(*op.batch_shape, 2, op.in_features, dtype=torch.long)
        with pytest.raises(TypeError, match="x must have a floating-point"):
            op(x)

    def test_other_float_dtype_rejected(self, op):
        real = op.dtype.to_real() if op.dtype.is_complex else op.dtype
        other = torch.float32 if real == torch.float64 else torch.float64
        x = torch.randn(*op.batch_shape, 2, op.in_features, dtype=other)
        with pytest.raises(TypeError, match="x must have the module's dtype"):
            op(x)

    def test_size_one_batch_dims_broadcast(self, op):
        if not op.batch_shape:
            pytest.skip("not a stack of structures")
        x = self._x(op, 4)[(slice(0, 1),) * len(op.batch_shape)]  # (1, ..., 1, 4, in)
        reference = self.reference_dense(op).detach()
        y = op(x)
        assert y.shape == (*op.batch_shape, 4, op.out_features)
        assert_close(y, x.to(reference.dtype) @ reference.mT)

    def test_repr_shows_shape(self, op):
        text = repr(op)
        assert f"in_features={op.in_features}" in text and f"out_features={op.out_features}" in text
        assert "max_rank" in text


def family_test_case(
    family: StructureFamily,
    example: int,
    reference_dense: Callable[[StructuredLinear], torch.Tensor],
    dtypes: tuple[torch.dtype, ...] | None = None,
) -> type[StructuredLinearTestCase]:
    """The :class:`StructuredLinearTestCase` of ``family.examples[example]``: members built by the
    family's ``build``, checked against ``reference_dense`` (which must not call the structure)
    and against the family's ``num_params`` formula. Assign it to a ``Test...`` name in a test
    module for pytest to collect it."""
    if not isinstance(family, StructureFamily):
        raise TypeError(f"family must be a StructureFamily, got {type(family).__name__}")
    in_features, out_features, kwargs = family.examples[example]
    hparams = {k: v for k, v in kwargs.items() if k != "batch_shape"}
    stack = math.prod(kwargs.get("batch_shape", ()))

    class Case(StructuredLinearTestCase):
        def make(self, dtype: torch.dtype) -> StructuredLinear:
            return family.build(in_features, out_features, **kwargs, dtype=dtype)

        def reference_dense(self, op: StructuredLinear) -> torch.Tensor:
            return reference_dense(op)

        def expected_num_params(self, op: StructuredLinear) -> int:
            return stack * family.num_params(in_features, out_features, **hparams)

    if dtypes is not None:
        Case.dtypes = dtypes
    Case.__name__ = Case.__qualname__ = f"Test_{family.name}_{example}"
    return Case
