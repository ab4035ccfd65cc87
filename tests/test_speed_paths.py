"""The fast multiply paths (bmm, einsum, Triton via its interpreter, torch.compile) agree with
the reference formula, gradients included. No timing here: see benchmarks/."""

import importlib.util
import os
import pathlib
import subprocess
import sys

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from test_monarch_reference import entrywise_monarch

from structmat import Monarch
from structmat.monarch import get_backend, multiply, set_backend
from structmat.monarch.multiply import _multiply_bmm, _multiply_einsum, _multiply_expanded

TESTS = pathlib.Path(__file__).parent


@st.composite
def factor_shapes(draw):
    k, q, l = draw(st.integers(1, 5)), draw(st.integers(1, 6)), draw(st.integers(1, 5))
    while (k * q) % l:
        l -= 1
    return k, q, draw(st.integers(1, 6)), l, draw(st.integers(1, 6)), k * q // l


@given(factor_shapes(), st.integers(1, 9))
def test_bmm_expanded_and_einsum_paths_equal_reference_with_grads(shape, n):
    k, q, p, l, s, r = shape
    b1, b2 = torch.randn(k, q, p), torch.randn(l, s, r)
    x = torch.randn(n, k * p)
    ref = x @ entrywise_monarch(b1.double(), b2.double()).float().T
    grads = []
    for path in (_multiply_bmm, _multiply_expanded, _multiply_einsum):
        ins = [t.clone().requires_grad_(True) for t in (x, b1, b2)]
        y = path(*ins)
        torch.testing.assert_close(y, ref, rtol=1e-4, atol=1e-4)
        y.backward(torch.ones_like(y))
        grads.append([t.grad for t in ins])
    for first, *others in zip(*grads, strict=True):  # per input: every path's gradient
        for other in others:
            torch.testing.assert_close(other, first, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("expanded_max_middle", [0, 64], ids=["bmm", "expanded"])
def test_torch_compile_module_matches_eager(monkeypatch, expanded_max_middle):
    monkeypatch.setattr(multiply, "EXPANDED_MAX_MIDDLE", expanded_max_middle)
    torch.manual_seed(0)
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


def test_backend_switch_validates():
    assert get_backend() in ("auto", "torch", "triton")
    with pytest.raises(ValueError, match="backend must be"):
        set_backend("cuda")
    set_backend("torch")
    set_backend("auto")


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


@pytest.mark.skipif(
    not torch.cuda.is_available() or importlib.util.find_spec("triton") is None, reason="no CUDA device or triton"
)
@given(cuda_kernel_cases(), st.booleans(), st.integers(0, 2**31 - 1))
def test_triton_on_cuda_matches_reference_with_grads(case, with_add, seed):
    """On the GPU the fused kernel's values and gradients equal the float64 reference (relative
    Frobenius error: float32 within 1e-5, half precisions within their rounding)."""
    from structmat.monarch.triton_kernel import MonarchTritonFunction

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
    y = MonarchTritonFunction.apply(*ins[:3], ins[3] if with_add else None)
    y.backward(g64.to(dtype))
    refs = [t.clone().requires_grad_(True) for t in (*(t.to(dtype).double() for t in ins64), add64.to(dtype).double())]
    y_ref = _multiply_bmm(*refs[:3]) + (refs[3] if with_add else 0)
    y_ref.backward(g64.to(dtype).double())

    def rel(a, b):
        return (torch.linalg.norm(a.double() - b) / torch.linalg.norm(b).clamp_min(1e-30)).item()

    assert rel(y, y_ref) <= tol
    for a, b in zip(ins[: 3 + with_add], refs, strict=False):
        assert a.grad is not None and torch.isfinite(a.grad).all()
        assert rel(a.grad, b.grad) <= tol


@pytest.mark.skipif(
    not torch.cuda.is_available() or importlib.util.find_spec("triton") is None, reason="no CUDA device or triton"
)
@pytest.mark.parametrize("nblocks,rank,triton_expected", [(4, 4, False), (8, 8, True), (16, 8, False)])
def test_cuda_backend_auto_and_more_layer_match_cpu(nblocks, rank, triton_expected):
    """On CUDA, 'auto' sends middles wider than the expanded path's limit to the kernel (and
    narrower ones to the fused PyTorch layer); either way the layer equals its CPU copy."""
    from torch import nn

    from structmat.adapters import MoReLinear
    from structmat.monarch.triton_kernel import MonarchTritonFunction

    calls = []
    orig = MonarchTritonFunction.apply
    try:
        MonarchTritonFunction.apply = lambda *a: calls.append(1) or orig(*a)
        torch.manual_seed(0)
        layer = MoReLinear(nn.Linear(256, 512), nblocks=nblocks, rank=rank)
        with torch.no_grad():
            layer.monarch.blkdiag2.normal_()
        x = torch.randn(2, 33, 256, requires_grad=True)
        layer_gpu = MoReLinear(nn.Linear(256, 512), nblocks=nblocks, rank=rank).cuda()
        layer_gpu.load_state_dict(layer.state_dict())
        x_gpu = x.detach().cuda().requires_grad_(True)
        y, y_gpu = layer(x), layer_gpu(x_gpu)
        assert bool(calls) == triton_expected
        torch.testing.assert_close(y_gpu.cpu(), y, rtol=1e-4, atol=1e-4)
        y.square().sum().backward()
        y_gpu.square().sum().backward()
        torch.testing.assert_close(x_gpu.grad.cpu(), x.grad, rtol=1e-4, atol=1e-4)
        for a, b in zip(layer_gpu.monarch.parameters(), layer.monarch.parameters(), strict=True):
            torch.testing.assert_close(a.grad.cpu(), b.grad, rtol=1e-4, atol=1e-3)
    finally:
        MonarchTritonFunction.apply = orig


@given(factor_shapes(), st.integers(1, 5))
def test_recompute_middle_paths_gradcheck(shape, n):
    from structmat.monarch.multiply import _ExpandedRecompute, _MonarchRecompute

    k, q, p, l, s, r = shape
    ins = [torch.randn(*sh, dtype=torch.float64, requires_grad=True) for sh in ((n, k * p), (k, q, p), (l, s, r))]
    for fn in (_MonarchRecompute, _ExpandedRecompute):
        assert torch.autograd.gradcheck(fn.apply, ins)
        torch.testing.assert_close(fn.apply(*ins), _multiply_bmm(*ins))
    # only the factors need gradients (a frozen input), as in an adapter's first layer
    x = ins[0].detach()
    for fn in (_MonarchRecompute, _ExpandedRecompute):
        assert torch.autograd.gradcheck(lambda w1, w2, fn=fn: fn.apply(x, w1, w2), ins[1:])


@pytest.mark.parametrize("expanded_max_middle", [0, 64], ids=["bmm", "expanded"])
def test_more_layer_saves_only_its_input(monkeypatch, expanded_max_middle):
    """The adapter keeps no activations of its own for backward (the base layer keeps x)."""
    monkeypatch.setattr(multiply, "EXPANDED_MAX_MIDDLE", expanded_max_middle)
    from torch import nn

    from structmat.adapters import MoReLinear

    layer = MoReLinear(nn.Linear(64, 96).requires_grad_(False), nblocks=4, rank=4)
    x = torch.randn(10, 64, requires_grad=True)
    storages = set()

    def pack(t):
        storages.add(t.untyped_storage().data_ptr())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = layer(x)
    params = {p.untyped_storage().data_ptr() for p in layer.parameters()}
    assert storages - params == {x.untyped_storage().data_ptr()}
    y.sum().backward()
    assert layer.monarch.blkdiag1.grad is not None and x.grad is not None


@st.composite
def layer_shapes(draw):
    k = draw(st.integers(1, 4))
    in_f, out_f = k * draw(st.integers(1, 5)), k * draw(st.integers(1, 5))
    return in_f, out_f, k, draw(st.integers(1, min(4, in_f, out_f)))


@given(layer_shapes(), st.integers(1, 6), st.booleans(), st.booleans(), st.booleans())
def test_fused_more_layer_equals_unfused_with_grads(shape, n, bias, train_base, batched):
    """MoReLinear's one-node fast path gives the unfused values and every gradient (x, both
    factors, and the base weight and bias when they are trained)."""
    from torch import nn

    from structmat.adapters import MoReLinear

    in_f, out_f, k, rank = shape
    base = nn.Linear(in_f, out_f, bias=bias, dtype=torch.float64).requires_grad_(train_base)
    layer = MoReLinear(base, nblocks=k, rank=rank)
    with torch.no_grad():
        layer.monarch.blkdiag2.normal_()
    x = torch.randn(*((2, n) if batched else (n,)), in_f, dtype=torch.float64, requires_grad=True)
    assert layer._fusable(x)
    results = []
    for fused in (True, False):
        layer.fused = fused
        layer.zero_grad()
        x.grad = None
        y = layer(x)
        y.backward(torch.ones_like(y) + torch.arange(y.numel(), dtype=y.dtype).reshape(y.shape) / y.numel())
        params = [p.grad.clone() for p in layer.parameters() if p.requires_grad]
        results.append([y.detach(), x.grad.clone(), *params])
    assert len(results[0]) == 2 + 2 + (1 + bias if train_base else 0)
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b)


def test_fused_more_layer_gradcheck():
    from structmat.adapters.fused import FrozenLinearMonarch

    ins = [
        torch.randn(*sh, dtype=torch.float64, requires_grad=True)
        for sh in ((5, 12), (6, 12), (6,), (3, 2, 4), (3, 2, 2))  # x, W, b, (k, q, p), (l, s, r)
    ]
    assert torch.autograd.gradcheck(FrozenLinearMonarch.apply, ins)


def test_fused_more_layer_steps_aside_when_it_would_change_the_result():
    """Hooks on the base, training dropout, a dtype mismatch or padding take the unfused path."""
    from torch import nn

    from structmat.adapters import MoReLinear

    x = torch.randn(3, 16)
    layer = MoReLinear(nn.Linear(16, 8), nblocks=4, rank=2)
    assert layer._fusable(x)
    calls = []
    handle = layer.base_layer.register_forward_hook(lambda *a: calls.append(1))
    assert not layer._fusable(x)
    layer(x)
    assert calls == [1]
    handle.remove()
    assert not layer._fusable(x.double())
    with_dropout = MoReLinear(nn.Linear(16, 8), nblocks=4, rank=2, dropout=0.1)
    assert not with_dropout._fusable(x)
    assert with_dropout.eval()._fusable(x)
    assert not MoReLinear(nn.Linear(15, 8), nblocks=4, rank=2)._fusable(torch.randn(3, 15))
    layer.fused = False
    assert not layer._fusable(x)


def test_torch_compile_fused_more_layer_matches_eager():
    from torch import nn

    from structmat.adapters import MoReLinear

    torch.manual_seed(0)
    layer = MoReLinear(nn.Linear(48, 80).requires_grad_(False), nblocks=4, rank=2)
    with torch.no_grad():
        layer.monarch.blkdiag2.normal_()
    x = torch.randn(2, 7, 48, requires_grad=True)
    assert layer._fusable(x)
    compiled = torch.compile(layer, backend="eager" if sys.platform == "win32" else "inductor", fullgraph=True)
    x2 = x.detach().clone().requires_grad_(True)
    y, y2 = layer(x), compiled(x2)
    torch.testing.assert_close(y2, y, rtol=1e-5, atol=1e-5)
    y.square().sum().backward()
    grads = [p.grad.clone() for p in (layer.monarch.blkdiag1, layer.monarch.blkdiag2)]
    layer.zero_grad()
    y2.square().sum().backward()
    for a, p in zip(grads, (layer.monarch.blkdiag1, layer.monarch.blkdiag2), strict=True):
        torch.testing.assert_close(p.grad, a, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(x2.grad, x.grad, rtol=1e-4, atol=1e-5)
