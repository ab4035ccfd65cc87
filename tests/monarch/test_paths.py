"""The Monarch multiply's paths: ``select_path`` over the cases that decide it, and the values
and gradients of every path against the entrywise formula (tests/helpers.py). No timing here:
see benchmarks/."""

import importlib.util
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from helpers import TESTS, entrywise_monarch, monarch_from_formula
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from structmat import Monarch
from structmat.adapters import MoReLinear
from structmat.monarch import MultiplyPath, backend, get_backend, select_path
from structmat.monarch.dispatch import EXPANDED_MAX_MIDDLE
from structmat.monarch.functions import BmmFunction, ExpandedFunction
from structmat.monarch.multiply import run_path

needs_cuda_triton = pytest.mark.skipif(
    not torch.cuda.is_available() or importlib.util.find_spec("triton") is None, reason="no CUDA device or triton"
)


# -- which path ------------------------------------------------------------------------------


def factors(k, q, p, l, s, r, batch=(), dtype=torch.float32):
    return torch.randn(*batch, k, q, p, dtype=dtype), torch.randn(*batch, l, s, r, dtype=dtype)


class Doubled(nn.Linear):
    """An ``nn.Linear`` subclass (as a quantized layer would be): keeps its own forward."""


@pytest.fixture
def global_forward_hook():
    handle = nn.modules.module.register_module_forward_hook(lambda *args: None)
    yield
    handle.remove()


SMALL = (4, 2, 8, 4, 8, 2)  # middle 8: the expanded path's range
WIDE = (4, 16, 8, 4, 8, 16)  # middle 64
CASES = {
    # name: (factor shape, batch, x dtype, base, dropout, backend, expected)
    "small middle": (SMALL, (), torch.float32, None, 0.0, None, MultiplyPath.EXPANDED),
    "wide middle": (WIDE, (), torch.float32, None, 0.0, None, MultiplyPath.BMM),
    "at the limit": ((4, 8, 8, 4, 8, 8), (), torch.float32, None, 0.0, None, MultiplyPath.EXPANDED),
    "stacked factors": (SMALL, (3,), torch.float32, None, 0.0, None, MultiplyPath.EINSUM),
    "stacked, bmm forced": (SMALL, (3,), torch.float32, None, 0.0, "bmm", MultiplyPath.EINSUM),
    "bmm forced": (SMALL, (), torch.float32, None, 0.0, "bmm", MultiplyPath.BMM),
    "expanded forced": (WIDE, (), torch.float32, None, 0.0, "expanded", MultiplyPath.EXPANDED),
    "torch backend": (WIDE, (), torch.float32, None, 0.0, "torch", MultiplyPath.BMM),
    "triton on CPU": (SMALL, (), torch.float32, None, 0.0, "triton", MultiplyPath.EXPANDED),
    "plain base": (SMALL, (), torch.float32, "linear", 0.0, None, MultiplyPath.EXPANDED_WITH_BASE),
    "float64": (SMALL, (), torch.float64, "linear64", 0.0, None, MultiplyPath.EXPANDED_WITH_BASE),
    "base, wide middle": (WIDE, (), torch.float32, "linear", 0.0, None, MultiplyPath.BMM),
    "base, bmm forced": (SMALL, (), torch.float32, "linear", 0.0, "bmm", MultiplyPath.BMM),
    "base, other dtype": (SMALL, (), torch.float64, "linear", 0.0, None, MultiplyPath.EXPANDED),
    "base, dropout": (SMALL, (), torch.float32, "linear", 0.1, None, MultiplyPath.EXPANDED),
    "base, forward hook": (SMALL, (), torch.float32, "forward hook", 0.0, None, MultiplyPath.EXPANDED),
    "base, forward pre-hook": (SMALL, (), torch.float32, "forward pre-hook", 0.0, None, MultiplyPath.EXPANDED),
    "base, backward hook": (SMALL, (), torch.float32, "backward hook", 0.0, None, MultiplyPath.EXPANDED),
    "base, backward pre-hook": (SMALL, (), torch.float32, "backward pre-hook", 0.0, None, MultiplyPath.EXPANDED),
    "base, global hook": (SMALL, (), torch.float32, "global hook", 0.0, None, MultiplyPath.EXPANDED),
    "base, subclass": (SMALL, (), torch.float32, "subclass", 0.0, None, MultiplyPath.EXPANDED),
    "base, patched forward": (SMALL, (), torch.float32, "patched", 0.0, None, MultiplyPath.EXPANDED),
    "base, padded": (SMALL, (), torch.float32, "padded", 0.0, None, MultiplyPath.EXPANDED),
    "base, autocast": (SMALL, (), torch.float32, "autocast", 0.0, None, MultiplyPath.EXPANDED),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_select_path(case, request):
    shape, batch, dtype, base_kind, dropout, forced, expected = CASES[case]
    w1, w2 = factors(*shape, batch=batch, dtype=torch.float64 if base_kind == "linear64" else torch.float32)
    k, q, p, l, s, r = shape
    x = torch.randn(*batch, 5, k * p, dtype=dtype)
    base = None
    context = backend(forced) if forced else torch.autocast("cpu", torch.bfloat16, enabled=base_kind == "autocast")
    if base_kind is not None:
        in_f = k * p - 1 if base_kind == "padded" else k * p
        base = (Doubled if base_kind == "subclass" else nn.Linear)(in_f, l * s, dtype=w1.dtype)
        hook = lambda *args: None  # noqa: E731
        {
            "forward hook": lambda: base.register_forward_hook(hook),
            "forward pre-hook": lambda: base.register_forward_pre_hook(hook),
            "backward hook": lambda: base.register_full_backward_hook(hook),
            "backward pre-hook": lambda: base.register_full_backward_pre_hook(hook),
            "global hook": lambda: request.getfixturevalue("global_forward_hook"),
            "patched": lambda: setattr(base, "forward", base.forward),
        }.get(base_kind, lambda: None)()
    with context:
        assert select_path(x, w1, w2, base=base, dropout=dropout) is expected


def test_backend_context_and_environment(monkeypatch):
    monkeypatch.delenv("STRUCTMAT_MONARCH_BACKEND", raising=False)
    assert get_backend() == "auto"
    with backend("bmm"):
        assert get_backend() == "bmm"
        with backend("expanded"):
            assert get_backend() == "expanded"
        assert get_backend() == "bmm"
    assert get_backend() == "auto"
    monkeypatch.setenv("STRUCTMAT_MONARCH_BACKEND", "bmm")
    assert get_backend() == "bmm"
    with backend("expanded"):  # the context wins over the environment
        assert get_backend() == "expanded"
    monkeypatch.setenv("STRUCTMAT_MONARCH_BACKEND", "cuda")
    with pytest.raises(ValueError, match="STRUCTMAT_MONARCH_BACKEND must be one of"):
        get_backend()
    with pytest.raises(ValueError, match="backend must be one of"):
        with backend("gpu"):
            pass


def test_backend_context_is_per_thread():
    import threading

    seen = []
    with backend("bmm"):
        thread = threading.Thread(target=lambda: seen.append(get_backend()))
        thread.start()
        thread.join()
    assert seen == ["auto"]


# -- every path against the formula ----------------------------------------------------------


@st.composite
def factor_shapes(draw):
    k, q, l = draw(st.integers(1, 5)), draw(st.integers(1, 6)), draw(st.integers(1, 5))
    while (k * q) % l:
        l -= 1
    return k, q, draw(st.integers(1, 6)), l, draw(st.integers(1, 6)), k * q // l


def reference_and_grads(x, w1, w2, g, add=None, weight=None, bias=None):
    """Values and gradients from the formula (helpers.monarch_from_formula) by autograd."""
    ins = [t.detach().clone().requires_grad_(True) for t in (x, w1, w2)]
    extra = [t.detach().clone().requires_grad_(True) if t is not None else None for t in (add, weight, bias)]
    y = ins[0] @ monarch_from_formula(ins[1], ins[2]).T
    if extra[0] is not None:
        y = y + extra[0]
    if extra[1] is not None:
        y = y + F.linear(ins[0], extra[1], extra[2])
    y.backward(g)
    return y.detach(), [t.grad for t in ins], [t.grad if t is not None else None for t in extra]


@given(factor_shapes(), st.integers(0, 7), st.booleans(), st.booleans(), st.booleans())
def test_every_path_equals_the_formula_with_grads(shape, n, with_add, save_middle, three_d):
    k, q, p, l, s, r = shape
    w1, w2 = factors(*shape, dtype=torch.float64)
    lead = (2, n) if three_d else (n,)
    x = torch.randn(*lead, k * p, dtype=torch.float64)
    add = torch.randn(*lead, l * s, dtype=torch.float64) if with_add else None
    g = torch.randn(*lead, l * s, dtype=torch.float64)
    y_ref, grads_ref, (add_grad_ref, _, _) = reference_and_grads(x, w1, w2, g, add=add)
    for path in (MultiplyPath.EXPANDED, MultiplyPath.BMM, MultiplyPath.EINSUM):
        ins = [t.clone().requires_grad_(True) for t in (x, w1, w2)]
        add_in = add.clone().requires_grad_(True) if with_add else None
        y = run_path(path, *ins, add=add_in, save_middle=save_middle)
        torch.testing.assert_close(y, y_ref, msg=f"{path}")
        y.backward(g)
        for got, want in zip(ins, grads_ref, strict=True):
            torch.testing.assert_close(got.grad, want, msg=f"{path}")
        if with_add:
            torch.testing.assert_close(add_in.grad, add_grad_ref)


@given(factor_shapes(), st.integers(0, 7), st.booleans(), st.booleans(), st.booleans())
def test_expanded_path_with_base_equals_the_formula_with_grads(shape, n, with_bias, train_base, save_middle):
    k, q, p, l, s, r = shape
    w1, w2 = factors(*shape, dtype=torch.float64)
    x = torch.randn(n, k * p, dtype=torch.float64)
    weight = torch.randn(l * s, k * p, dtype=torch.float64)
    bias = torch.randn(l * s, dtype=torch.float64) if with_bias else None
    g = torch.randn(n, l * s, dtype=torch.float64)
    y_ref, grads_ref, (_, weight_grad, bias_grad) = reference_and_grads(x, w1, w2, g, weight=weight, bias=bias)
    ins = [t.clone().requires_grad_(True) for t in (x, w1, w2)]
    base = [t.clone().requires_grad_(train_base) if t is not None else None for t in (weight, bias)]
    y = run_path(MultiplyPath.EXPANDED_WITH_BASE, *ins, weight=base[0], bias=base[1], save_middle=save_middle)
    torch.testing.assert_close(y, y_ref)
    y.backward(g)
    for got, want in zip(ins, grads_ref, strict=True):
        torch.testing.assert_close(got.grad, want)
    if train_base:
        torch.testing.assert_close(base[0].grad, weight_grad)
        if with_bias:
            torch.testing.assert_close(base[1].grad, bias_grad)


@pytest.mark.parametrize("save_middle", [True, False])
def test_path_functions_gradcheck(save_middle):
    torch.manual_seed(0)
    shapes = ((5, 12), (4, 2, 3), (2, 6, 4), (5, 12), (12, 12), (12,))  # x, blkdiag1, blkdiag2, add, W, b
    x, w1, w2, add, W, b = (torch.randn(*sh, dtype=torch.float64, requires_grad=True) for sh in shapes)
    assert torch.autograd.gradcheck(lambda *t: ExpandedFunction.apply(*t, None, None, save_middle)[0], (x, w1, w2, add))
    assert torch.autograd.gradcheck(
        lambda *t: ExpandedFunction.apply(*t[:3], None, *t[3:], save_middle)[0], (x, w1, w2, W, b)
    )
    assert torch.autograd.gradcheck(lambda *t: BmmFunction.apply(*t, save_middle)[0], (x, w1, w2, add))
    frozen = x.detach()  # only the factors need gradients, as in an adapter's first layer
    assert torch.autograd.gradcheck(lambda a, c: BmmFunction.apply(frozen, a, c, None, save_middle)[0], (w1, w2))


@pytest.mark.parametrize("forced", ["bmm", "expanded"])
@given(factor_shapes(), st.integers(1, 3), st.booleans())
def test_monarch_addmm_equals_add_of_forward_with_grads(forced, shape, n, recompute):
    """``addmm(y, x) == y + x @ M.T`` on both paths (the add is fused there), gradients too."""
    k, q, p, l, s, r = shape
    with backend(forced):
        m = Monarch.from_factors(*factors(*shape, dtype=torch.float64))
        m.recompute_middle = recompute
        x = torch.randn(n, k * p, dtype=torch.float64, requires_grad=True)
        y = torch.randn(n, l * s, dtype=torch.float64, requires_grad=True)
        out = m.addmm(y, x)
        dense = entrywise_monarch(m.blkdiag1.detach(), m.blkdiag2.detach())
        torch.testing.assert_close(out, y + x @ dense.T)
        g = torch.randn_like(out)
        fused = torch.autograd.grad(out, (x, y, *m.parameters()), g)
        plain = torch.autograd.grad(y + m(x), (x, y, *m.parameters()), g)
    for a, b in zip(fused, plain, strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("forced", ["bmm", "expanded"])
def test_torch_compile_module_matches_eager(forced):
    torch.manual_seed(0)
    with backend(forced):
        m = Monarch(48, 80, nblocks=4, rank=3)
        compiled = torch.compile(m, backend="eager" if sys.platform == "win32" else "inductor", fullgraph=True)
        x = torch.randn(2, 7, 48, requires_grad=True)
        x2 = x.detach().clone().requires_grad_(True)
        y, y2 = m(x), compiled(x2)
        torch.testing.assert_close(y2, y, rtol=1e-5, atol=1e-5)
        y.sum().backward()
        g1 = [p.grad.clone() for p in m.parameters()]
        m.zero_grad()
        y2.sum().backward()
    for a, p in zip(g1, m.parameters(), strict=True):
        torch.testing.assert_close(p.grad, a, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(x2.grad, x.grad, rtol=1e-4, atol=1e-5)


# -- the adapter layer on its paths ------------------------------------------------------------


@pytest.mark.parametrize("forced", ["bmm", "expanded"])
def test_more_layer_saves_only_its_input(forced):
    """The adapter keeps no activations of its own for backward (the base layer keeps x)."""
    layer = MoReLinear(nn.Linear(64, 96).requires_grad_(False), nblocks=4, rank=4)
    x = torch.randn(10, 64, requires_grad=True)
    storages = set()

    def pack(t):
        storages.add(t.untyped_storage().data_ptr())
        return t

    with backend(forced), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = layer(x)
    params = {p.untyped_storage().data_ptr() for p in layer.parameters()}
    assert storages - params == {x.untyped_storage().data_ptr()}
    y.sum().backward()
    assert layer.update.blkdiag1.grad is not None and x.grad is not None


@st.composite
def layer_shapes(draw):
    k = draw(st.integers(1, 4))
    in_f, out_f = k * draw(st.integers(1, 5)), k * draw(st.integers(1, 5))
    return in_f, out_f, k, draw(st.integers(1, min(4, in_f, out_f)))


@given(layer_shapes(), st.integers(0, 6), st.booleans(), st.booleans(), st.booleans())
def test_fused_more_layer_equals_unfused_with_grads(shape, n, bias, train_base, batched):
    """MoReLinear's one-node path gives the unfused values and every gradient (x, both factors,
    and the base weight and bias when they are trained)."""
    in_f, out_f, k, rank = shape
    base = nn.Linear(in_f, out_f, bias=bias, dtype=torch.float64).requires_grad_(train_base)
    layer = MoReLinear(base, nblocks=k, rank=rank)
    with torch.no_grad():
        layer.update.blkdiag2.normal_()
    x = torch.randn(*((2, n) if batched else (n,)), in_f, dtype=torch.float64, requires_grad=True)
    assert select_path(x, layer.update.blkdiag1, layer.update.blkdiag2, base=base) is MultiplyPath.EXPANDED_WITH_BASE
    results = []
    for fused in (True, False):
        layer.fused = fused
        layer.zero_grad()
        x.grad = None
        y = layer(x)
        y.backward(torch.ones_like(y) + torch.arange(y.numel(), dtype=y.dtype).reshape(y.shape) / max(1, y.numel()))
        params = [p.grad.clone() for p in layer.parameters() if p.requires_grad]
        results.append([y.detach(), x.grad.clone(), *params])
    assert len(results[0]) == 2 + 2 + (1 + bias if train_base else 0)
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b)


def test_more_layer_hooks_fire_on_the_base():
    layer = MoReLinear(nn.Linear(16, 8), nblocks=4, rank=2)
    calls = []
    layer.base_layer.register_forward_hook(lambda *a: calls.append("forward"))
    layer.base_layer.register_full_backward_hook(lambda *a: calls.append("backward"))
    layer(torch.randn(3, 16, requires_grad=True)).sum().backward()
    assert calls == ["forward", "backward"]


def test_torch_compile_fused_more_layer_matches_eager():
    torch.manual_seed(0)
    layer = MoReLinear(nn.Linear(48, 80).requires_grad_(False), nblocks=4, rank=2)
    with torch.no_grad():
        layer.update.blkdiag2.normal_()
    x = torch.randn(2, 7, 48, requires_grad=True)
    assert (
        select_path(x, layer.update.blkdiag1, layer.update.blkdiag2, base=layer.base_layer)
        is MultiplyPath.EXPANDED_WITH_BASE
    )
    compiled = torch.compile(layer, backend="eager" if sys.platform == "win32" else "inductor", fullgraph=True)
    x2 = x.detach().clone().requires_grad_(True)
    y, y2 = layer(x), compiled(x2)
    torch.testing.assert_close(y2, y, rtol=1e-5, atol=1e-5)
    y.square().sum().backward()
    grads = [p.grad.clone() for p in (layer.update.blkdiag1, layer.update.blkdiag2)]
    layer.zero_grad()
    y2.square().sum().backward()
    for a, p in zip(grads, (layer.update.blkdiag1, layer.update.blkdiag2), strict=True):
        torch.testing.assert_close(p.grad, a, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(x2.grad, x.grad, rtol=1e-4, atol=1e-5)


def test_expanded_limit_is_a_named_constant():
    assert EXPANDED_MAX_MIDDLE == 32  # set from benchmarks/results (see structmat/monarch/dispatch.py)


# -- Triton --------------------------------------------------------------------------------------


@pytest.mark.heavy
@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton not installed (pip install triton)")
def test_triton_kernel_in_interpreter():
    """The kernel's forward and backward under Triton's interpreter, on shapes hypothesis draws
    (in a subprocess: the interpreter is switched on before triton is imported)."""
    env = os.environ | {
        "TRITON_INTERPRET": "1",
        "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
    }
    out = subprocess.run(
        [sys.executable, str(TESTS / "triton_interp_check.py"), "30"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "triton interpreter: OK" in out.stdout


@st.composite
def cuda_kernel_cases(draw):
    k = draw(st.integers(1, 8))
    q = draw(st.integers(1, 128 // k))
    l = draw(st.sampled_from([d for d in range(1, k * q + 1) if (k * q) % d == 0]))
    shape = (k, q, draw(st.integers(1, 300)), l, draw(st.integers(1, 300)), k * q // l)
    return shape, draw(st.integers(0, 600)), draw(st.sampled_from(["float32", "bfloat16", "float16"]))


@needs_cuda_triton
@given(cuda_kernel_cases(), st.booleans(), st.integers(0, 2**31 - 1))
def test_triton_on_cuda_matches_reference_with_grads(case, with_add, seed):
    """On the GPU the fused kernel's values and gradients equal the float64 reference (relative
    Frobenius error: float32 within 1e-5, half precisions within their rounding)."""
    from structmat.monarch.triton_kernel import triton_multiply

    (k, q, p, l, s, r), n, dtype_name = case
    dtype = getattr(torch, dtype_name)
    # the kernel rounds the middle to the input dtype, as the PyTorch paths do; with few terms
    # a sum can cancel, so half precisions get a few roundings' worth
    tol = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 6e-2}[dtype]
    torch.manual_seed(seed)
    ins64 = [torch.randn(*sh, dtype=torch.float64, device="cuda") for sh in ((n, k * p), (k, q, p), (l, s, r))]
    add64 = torch.randn(n, l * s, dtype=torch.float64, device="cuda")
    g64 = torch.randn(n, l * s, dtype=torch.float64, device="cuda")
    torch.full((2**24,), float("nan"), device="cuda")  # the caching allocator hands this memory out again
    ins = [t.to(dtype).requires_grad_(True) for t in (*ins64, add64)]
    y = triton_multiply(*ins[:3], add=ins[3] if with_add else None)
    y.backward(g64.to(dtype))
    refs = [t.clone().requires_grad_(True) for t in (*(t.to(dtype).double() for t in ins64), add64.to(dtype).double())]
    y_ref = run_path(MultiplyPath.BMM, *refs[:3]) + (refs[3] if with_add else 0)
    y_ref.backward(g64.to(dtype).double())

    def rel(a, b):
        return (torch.linalg.norm(a.double() - b) / torch.linalg.norm(b).clamp_min(1e-30)).item()

    assert rel(y, y_ref) <= tol
    for a, b in zip(ins[: 3 + with_add], refs, strict=False):
        assert a.grad is not None and torch.isfinite(a.grad).all()
        assert rel(a.grad, b.grad) <= tol


@needs_cuda_triton
@pytest.mark.parametrize(
    "nblocks,rank,expected", [(4, 4, MultiplyPath.EXPANDED), (8, 8, MultiplyPath.TRITON), (16, 8, MultiplyPath.BMM)]
)
def test_cuda_backend_auto_and_more_layer_match_cpu(nblocks, rank, expected):
    """On CUDA, 'auto' sends middles of 33-64 to the kernel; either way the layer equals its CPU copy."""
    torch.manual_seed(0)
    layer = MoReLinear(nn.Linear(256, 512), nblocks=nblocks, rank=rank)
    with torch.no_grad():
        layer.update.blkdiag2.normal_()
    x = torch.randn(2, 33, 256, requires_grad=True)
    layer_gpu = MoReLinear(nn.Linear(256, 512), nblocks=nblocks, rank=rank).cuda()
    layer_gpu.load_state_dict(layer.state_dict())
    x_gpu = x.detach().cuda().requires_grad_(True)
    assert select_path(x_gpu, layer_gpu.update.blkdiag1, layer_gpu.update.blkdiag2) is expected
    y, y_gpu = layer(x), layer_gpu(x_gpu)
    torch.testing.assert_close(y_gpu.cpu(), y, rtol=1e-4, atol=1e-4)
    y.square().sum().backward()
    y_gpu.square().sum().backward()
    torch.testing.assert_close(x_gpu.grad.cpu(), x.grad, rtol=1e-4, atol=1e-4)
    for a, b in zip(layer_gpu.update.parameters(), layer.update.parameters(), strict=True):
        torch.testing.assert_close(a.grad.cpu(), b.grad, rtol=1e-4, atol=1e-3)


def test_get_backend_is_marked_as_assume_constant_result_marks():
    """dispatch.py marks ``get_backend`` without importing ``torch._dynamo`` (1 s at import): the
    mark must be what ``torch.compiler.assume_constant_result`` sets (the compile tests above
    fail with fullgraph=True without it)."""

    def probe() -> str:
        return "auto"

    before = dict(vars(probe))
    marked = torch.compiler.assume_constant_result(probe)
    added = {k: v for k, v in vars(marked).items() if k not in before}
    assert added, "assume_constant_result no longer marks the function: update dispatch._assume_constant_result"
    assert {k: getattr(get_backend, k, None) for k in added} == added
