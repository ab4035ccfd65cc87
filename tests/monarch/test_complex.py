"""Complex Monarch factors: the paths that take them, values and gradients against the entrywise
formula (tests/helpers.py) by autograd, which uses PyTorch's conjugate convention for complex."""

import pytest
import torch
from helpers import entrywise_monarch, monarch_dense_reference, monarch_from_formula
from hypothesis import given
from hypothesis import strategies as st

from structmat import Monarch
from structmat.monarch import MultiplyPath, backend, select_path
from structmat.monarch.functions import BmmFunction
from structmat.monarch.multiply import run_path


def cfactors(k, q, p, l, s, r, batch=(), dtype=torch.complex128, seed=0):  # noqa: E741
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*batch, k, q, p, dtype=dtype, generator=g), torch.randn(
        *batch, l, s, r, dtype=dtype, generator=g
    )


@st.composite
def factor_shapes(draw):
    k, q, p, s = (draw(st.integers(1, 5)) for _ in range(4))
    l = draw(st.sampled_from([d for d in range(1, k * q + 1) if (k * q) % d == 0]))  # noqa: E741
    return k, q, p, l, s, k * q // l


@pytest.mark.parametrize("forced", [None, "auto", "torch", "expanded", "bmm"])
def test_complex_factors_take_a_path_that_supports_them(forced):
    w1, w2 = cfactors(4, 2, 8, 4, 8, 2)  # middle 8: real factors would go to the expanded path
    x = torch.randn(5, 32, dtype=torch.complex128)
    ctx = backend(forced) if forced else torch.autocast("cpu", enabled=False)
    with ctx:
        assert select_path(x, w1, w2) is MultiplyPath.BMM
        assert select_path(x, w1.real, w2.real) is MultiplyPath.BMM  # complex x, real factors
        assert select_path(x.real, w1.real, w2.real) is (MultiplyPath.BMM if forced == "bmm" else MultiplyPath.EXPANDED)
        w1b, w2b = cfactors(4, 2, 8, 4, 8, 2, batch=(3,))
        assert select_path(x.expand(3, 5, 32), w1b, w2b) is MultiplyPath.EINSUM


@given(factor_shapes(), st.integers(0, 5), st.booleans(), st.booleans(), st.integers(0, 2**16))
def test_complex_paths_equal_the_formula_with_grads(shape, n, with_add, save_middle, seed):
    k, q, p, l, s, r = shape
    w1, w2 = cfactors(*shape, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(n, k * p, dtype=torch.complex128, generator=g)
    add = torch.randn(n, l * s, dtype=torch.complex128, generator=g) if with_add else None
    gy = torch.randn(n, l * s, dtype=torch.complex128, generator=g)
    ref_in = [t.clone().requires_grad_(True) for t in (x, w1, w2)]
    y_ref = ref_in[0] @ monarch_from_formula(ref_in[1], ref_in[2]).T + (add if with_add else 0)
    y_ref.backward(gy)
    for path in (MultiplyPath.BMM, MultiplyPath.EINSUM):
        ins = [t.clone().requires_grad_(True) for t in (x, w1, w2)]
        y = run_path(path, *ins, add=add, save_middle=save_middle)
        torch.testing.assert_close(y, y_ref.detach(), msg=f"{path}")
        y.backward(gy)
        for got, ref in zip(ins, ref_in, strict=True):
            torch.testing.assert_close(got.grad, ref.grad, msg=f"{path}")


@pytest.mark.parametrize("save_middle", [True, False])
def test_bmm_function_complex_gradcheck(save_middle):
    g = torch.Generator().manual_seed(0)
    shapes = ((5, 12), (4, 2, 3), (2, 6, 4), (5, 12))  # x, blkdiag1 (k != l), blkdiag2, add
    x, w1, w2, add = (torch.randn(*sh, dtype=torch.complex128, generator=g, requires_grad=True) for sh in shapes)
    assert torch.autograd.gradcheck(lambda *t: BmmFunction.apply(*t, save_middle), (x, w1, w2, add))


@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
def test_monarch_from_complex_factors(dtype):
    """Was a TypeError (check_float_dtype refused complex factors)."""
    w1, w2 = cfactors(3, 4, 5, 2, 7, 6, dtype=dtype)
    m = Monarch.from_factors(w1, w2, in_features=13, out_features=12)  # padded and cropped
    assert m.dtype == dtype and m.to_dense().dtype == dtype
    dense = monarch_dense_reference(m).to(torch.complex128)
    tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.complex64 else {}
    torch.testing.assert_close(m.to_dense().to(torch.complex128), dense, **tol)
    x = torch.randn(2, 4, 13, dtype=dtype)
    torch.testing.assert_close(m(x).to(torch.complex128), x.to(torch.complex128) @ dense.T, **tol)
    real = dtype.to_real()
    xr = torch.randn(4, 13, dtype=real)  # a real input is taken as complex
    y = m(xr)
    assert y.dtype == dtype
    torch.testing.assert_close(y.to(torch.complex128), xr.to(torch.complex128) @ dense.T, **tol)
    yc = torch.randn(4, 12, dtype=dtype)
    torch.testing.assert_close(m.addmm(yc, xr).to(torch.complex128), yc.to(torch.complex128) + y.to(torch.complex128))


def test_real_monarch_on_complex_input():
    w1, w2 = (w.real.contiguous() for w in cfactors(2, 3, 4, 3, 5, 2))
    m = Monarch.from_factors(w1, w2)
    x = torch.randn(3, 8, dtype=torch.complex128)
    torch.testing.assert_close(m(x), x @ entrywise_monarch(w1, w2).to(torch.complex128).T)
