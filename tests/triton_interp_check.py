"""Run in a subprocess with TRITON_INTERPRET=1 by test_speed.py: the Triton kernel on CPU."""

import os
import sys

assert os.environ.get("TRITON_INTERPRET") == "1"
import torch  # noqa: E402
from test_monarch_reference import entrywise_monarch  # noqa: E402

from structmat import Monarch  # noqa: E402
from structmat.monarch import set_backend  # noqa: E402
from structmat.monarch.multiply import _multiply_bmm  # noqa: E402
from structmat.monarch.triton_kernel import MonarchTritonFunction, monarch_forward_triton  # noqa: E402

torch.manual_seed(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
cases = [(4, 1, 6, 4, 5, 1), (4, 4, 8, 4, 8, 4), (2, 3, 5, 3, 7, 2), (4, 8, 16, 4, 12, 8), (3, 4, 5, 2, 7, 6)]
for k, q, p, l, s, r in cases:
    b1 = torch.randn(k, q, p, dtype=torch.float32)
    b2 = torch.randn(l, s, r, dtype=torch.float32)
    x = torch.randn(37, k * p, dtype=torch.float32)
    ref = x @ entrywise_monarch(b1.double(), b2.double()).float().T
    torch.testing.assert_close(monarch_forward_triton(x, b1, b2), ref, rtol=1e-4, atol=1e-4)
    # gradients through the autograd Function equal those of the PyTorch path
    xs = [t.clone().requires_grad_(True) for t in (x, b1, b2)]
    ys = [t.clone().requires_grad_(True) for t in (x, b1, b2)]
    g = torch.randn(37, l * s)
    MonarchTritonFunction.apply(*xs).backward(g)
    _multiply_bmm(*ys).backward(g)
    for a, b in zip(xs, ys, strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-4)
# the module dispatches to the kernel when the backend is forced
set_backend("triton")
m = Monarch(20, 12, nblocks=4, rank=2)
x = torch.randn(3, 5, 20)
torch.testing.assert_close(m(x), x @ m.to_dense().T, rtol=1e-4, atol=1e-4)
print("triton interpreter: OK")
