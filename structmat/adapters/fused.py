"""The MoRe layer's fast path: a frozen ``nn.Linear`` and its Monarch update as one autograd node.

``y = x @ W.T + b + x @ M.T`` with ``M = Lt.T @ R`` (the expanded factors of
:func:`structmat.monarch.multiply.expand_factors`, used while the middle width ``k*q`` is small).

What one node buys over ``base(x)`` followed by the update (measured on CPU, see
``benchmarks/bench_layer.py``):

- backward writes the base's input gradient ``g @ W`` and adds the update's ``g_h @ R`` into it
  in place (BLAS ``beta=1``), instead of autograd adding two ``(n, in)`` gradients;
- forward adds the update in place into the base's output;
- one node instead of three (base, update, sum) in the graph;
- only ``x`` is kept for backward (the middle ``x @ R.T`` is recomputed), as in the unfused
  adapter, so it keeps less than LoRA, which also keeps ``A @ x``.

The base weight and bias get gradients too when they require them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..monarch.multiply import expand_first, expand_second, first_factor_grad, second_factor_grad


class FrozenLinearMonarch(torch.autograd.Function):
    """``x @ weight.T + bias + x @ M.T`` for unbatched, unpadded Monarch factors."""

    @staticmethod
    def forward(
        ctx,
        x: torch.Tensor,  # (..., in)
        weight: torch.Tensor,  # (out, in)
        bias: torch.Tensor | None,  # (out,)
        blkdiag1: torch.Tensor,  # (k, q, p), k*p == in
        blkdiag2: torch.Tensor,  # (l, s, r), l*s == out, l*r == k*q
    ) -> torch.Tensor:  # (..., out)
        ctx.save_for_backward(x, weight, blkdiag1, blkdiag2)
        x2 = x.reshape(-1, x.shape[-1])  # (n, in)
        y = F.linear(x2, weight, bias)  # (n, out)
        y.addmm_(x2 @ expand_first(blkdiag1).T, expand_second(blkdiag2))  # + (n, k*q) @ (k*q, out)
        return y.reshape(*x.shape[:-1], y.shape[-1])

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor):  # (..., out)
        x, weight, w1, w2 = ctx.saved_tensors
        need_x, need_w, need_b, need_w1, need_w2 = ctx.needs_input_grad
        x2 = x.reshape(-1, x.shape[-1])  # (n, in)
        g = grad_y.reshape(-1, grad_y.shape[-1])  # (n, out)
        R, Lt = expand_first(w1), expand_second(w2)  # (k*q, in), (k*q, out)
        grad_h = g @ Lt.T  # (n, k*q)
        grad_x = grad_w = grad_b = grad_w1 = grad_w2 = None
        if need_x:
            grad_x = (g @ weight).addmm_(grad_h, R).reshape(x.shape)  # base + update, in place
        if need_w:
            grad_w = g.T @ x2
        if need_b:  # False when bias is None
            grad_b = g.sum(0)
        if need_w1:
            grad_w1 = first_factor_grad(grad_h, x2, w1.shape[0])
        if need_w2:
            grad_w2 = second_factor_grad(x2 @ R.T, g, w2.shape[0])
        return grad_x, grad_w, grad_b, grad_w1, grad_w2
