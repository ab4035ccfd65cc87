"""Run in a subprocess with TRITON_INTERPRET=1 by test_paths.py: the Triton kernel on CPU.

Hypothesis draws the shapes (middles up to the kernel's limit, rows across tile edges, with
and without ``add``): the forward equals the entrywise reference formula in float64, and every
gradient equals that of the PyTorch bmm path.
"""

import os
import sys

assert os.environ.get("TRITON_INTERPRET") == "1"
import torch  # noqa: E402
from helpers import entrywise_monarch  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from structmat import Monarch  # noqa: E402
from structmat.monarch import MultiplyPath, backend, select_path  # noqa: E402
from structmat.monarch.multiply import monarch_multiply, run_path  # noqa: E402
from structmat.monarch.triton_kernel import MAX_MIDDLE, supports, triton_multiply  # noqa: E402


@st.composite
def kernel_shapes(draw):
    k = draw(st.integers(1, 6))
    q = draw(st.integers(1, MAX_MIDDLE // k))
    l = draw(st.sampled_from([d for d in range(1, k * q + 1) if (k * q) % d == 0]))
    return k, q, draw(st.integers(1, 40)), l, draw(st.integers(1, 40)), k * q // l


@settings(
    max_examples=int(sys.argv[1]) if len(sys.argv) > 1 else 25, deadline=None, derandomize=bool(os.environ.get("CI"))
)
@given(kernel_shapes(), st.integers(0, 70), st.booleans(), st.integers(0, 2**31 - 1))
def check(shape, n, with_add, seed):
    k, q, p, l, s, r = shape
    gen = torch.Generator().manual_seed(seed)
    b1, b2 = torch.randn(k, q, p, generator=gen), torch.randn(l, s, r, generator=gen)
    x, add = torch.randn(n, k * p, generator=gen), torch.randn(n, l * s, generator=gen)
    assert supports(x, b1, b2)
    ref = x.double() @ entrywise_monarch(b1.double(), b2.double()).T + (add.double() if with_add else 0)
    xs = [t.clone().requires_grad_(True) for t in (x, b1, b2, add)]
    ys = [t.clone().requires_grad_(True) for t in (x, b1, b2, add)]
    y = triton_multiply(*xs[:3], add=xs[3] if with_add else None)
    torch.testing.assert_close(y.double(), ref, rtol=1e-4, atol=1e-4)
    g = torch.randn(n, l * s, generator=gen)
    y.backward(g)
    (run_path(MultiplyPath.BMM, *ys[:3]) + (ys[3] if with_add else 0)).backward(g)
    for a, b in zip(xs, ys, strict=True):
        if a.grad is None or b.grad is None:
            assert a.grad is None and (b.grad is None or not with_add)
        else:
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-4)
    # only the factors need gradients (a frozen input)
    w = [t.clone().requires_grad_(True) for t in (b1, b2)]
    triton_multiply(x, *w).backward(g)
    torch.testing.assert_close(w[0].grad, ys[1].grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(w[1].grad, ys[2].grad, rtol=1e-4, atol=1e-4)


check()
# the multiply and the module dispatch to the kernel when the backend is forced, 3D input included
m = Monarch(20, 12, nblocks=4, rank=2)
x = torch.randn(3, 5, 20)
with backend("triton"):
    assert select_path(x, m.blkdiag1, m.blkdiag2) is MultiplyPath.TRITON
    torch.testing.assert_close(m(x), x @ m.to_dense().T, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(
        monarch_multiply(x.reshape(15, 20), m.blkdiag1, m.blkdiag2),
        x.reshape(15, 20) @ m.to_dense().T,
        rtol=1e-4,
        atol=1e-4,
    )
    # a middle over the limit takes the PyTorch path
    big = Monarch(256, 256, nblocks=16, rank=16)
    xb = torch.randn(4, 256)
    assert not supports(xb, big.blkdiag1, big.blkdiag2)
    assert select_path(xb, big.blkdiag1, big.blkdiag2) is MultiplyPath.BMM
    torch.testing.assert_close(big(xb), xb @ big.to_dense().T, rtol=1e-4, atol=1e-4)
print("triton interpreter: OK")
