"""A reusable pytest test case for any :class:`~structmat.StructuredLinear`.

In the spirit of ``linear_operator``'s test cases: subclass it, implement :meth:`make`, and
the structure (yours or one of structmat's) is checked against its dense reference::

    from structmat.testing import StructuredLinearTestCase

    class TestMyStructure(StructuredLinearTestCase):
        def make(self, dtype):
            return MyStructure(12, 20, dtype=dtype)
"""

from __future__ import annotations

import pytest
import torch

from .base import StructuredLinear


def assert_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Tolerances scaled to the dtype and to the size of the expected values."""
    real = actual.real.dtype if actual.is_complex() else actual.dtype
    rtol = {torch.float64: 1e-10, torch.float32: 1e-4}.get(real, 1e-2)
    atol = rtol * max(1.0, float(expected.detach().abs().max()) if expected.numel() else 1.0)
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol)


class StructuredLinearTestCase:
    """Checks every structure must pass. Override :meth:`make`."""

    dtypes = (torch.float32, torch.float64)

    def make(self, dtype: torch.dtype) -> StructuredLinear:
        raise NotImplementedError

    @pytest.fixture(params=dtypes, ids=lambda d: str(d).removeprefix("torch."))
    def op(self, request) -> StructuredLinear:
        torch.manual_seed(0)
        return self.make(request.param)

    def _x(self, op: StructuredLinear, *lead: int) -> torch.Tensor:
        return torch.randn(*op.batch_shape, *lead, op.in_features, dtype=op.to_dense().real.dtype)

    def test_forward_equals_dense(self, op):
        x = self._x(op, 5) if op.batch_shape else self._x(op, 2, 3, 5)
        dense = op.to_dense()
        y = op(x)
        assert y.shape == (*x.shape[:-1], op.out_features)
        assert_close(y, x.to(dense.dtype) @ dense.mT)

    def test_to_dense_shape_dtype_device(self, op):
        dense = op.to_dense()
        assert dense.shape == op.shape
        assert dense.device == op.device
        assert dense.dtype == op.dtype

    def test_num_params(self, op):
        assert op.num_params == sum(p.numel() for p in op.parameters())

    def test_rank_at_most_max_rank(self, op):
        dense = op.to_dense().detach()  # rank tolerance from its own dtype's epsilon
        assert bool((torch.linalg.matrix_rank(dense) <= op.max_rank).all())

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

    def test_repr_shows_shape(self, op):
        text = repr(op)
        assert f"in_features={op.in_features}" in text and f"out_features={op.out_features}" in text
        assert "max_rank" in text
