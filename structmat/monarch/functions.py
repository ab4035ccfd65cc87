"""The PyTorch multiply paths (see :mod:`.dispatch`), one autograd Function each, with
hand-written backwards from the factor algebra (:mod:`.factors`).

Both Functions take ``save_middle``: keep the middle activations ``(n, k*q)`` for backward, or
keep only the input and recompute the middle there (one extra small product). An adapter wants
the latter: its input is kept by the frozen layer anyway, so it then stores nothing of its own
(less than LoRA, which also keeps ``A @ x``).

The Functions are written in the ``forward`` + ``setup_context`` form with a generated vmap rule,
so ``torch.func`` (``grad``, ``vmap``, ``functional_call``: per-sample gradients) works through
them. ``forward`` returns ``(y, middle)``; the middle is an intermediate for backward, marked
non-differentiable, and callers use ``y`` (:func:`.multiply.run_path`). Autocast is handled at
that boundary: the inputs are cast to the autocast dtype there and the Functions run in one dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .factors import expand_factors, first_factor_grad, middle_to_second, second_factor_grad, second_to_middle


def _rows(t: torch.Tensor) -> torch.Tensor:
    """(..., width) -> (n, width); zero rows are fine (the width is never zero)."""
    return t.reshape(-1, t.shape[-1])


class ExpandedFunction(torch.autograd.Function):
    """``add + x @ M.T`` or, with a base layer, ``x @ weight.T + bias + x @ M.T``, as two GEMMs
    on the expanded factors ``R`` (k*q, k*p) and ``Lt`` (k*q, l*s) (unbatched factors, no padding).

    The base weight and bias get gradients when they require them; the input gradient of base
    and update is one buffer (``g @ W`` with ``g_h @ R`` added in place)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(
        x: torch.Tensor,  # (..., k*p)
        blkdiag1: torch.Tensor,  # (k, q, p)
        blkdiag2: torch.Tensor,  # (l, s, r)
        add: torch.Tensor | None,  # (..., l*s) or None
        weight: torch.Tensor | None,  # (l*s, k*p): a base nn.Linear's weight, or None
        bias: torch.Tensor | None,  # (l*s,) or None
        save_middle: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:  # (..., l*s), the middle (n, k*q)
        x2 = _rows(x)  # (n, k*p)
        R, Lt = expand_factors(blkdiag1, blkdiag2)
        h = x2 @ R.T  # (n, k*q)
        if weight is not None:
            y = F.linear(x2, weight, bias).addmm_(h, Lt)
        elif add is not None:
            y = torch.addmm(_rows(add), h, Lt)
        else:
            y = h @ Lt
        return y.reshape(*x.shape[:-1], y.shape[-1]), h

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        x, blkdiag1, blkdiag2, _, weight, _, save_middle = inputs
        h = output[1]
        ctx.mark_non_differentiable(h)
        ctx.save_for_backward(_rows(x), blkdiag1, blkdiag2, weight, h if save_middle else None)
        ctx.x_shape = x.shape

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor, _grad_h: torch.Tensor | None):  # (..., l*s)
        x2, w1, w2, weight, h = ctx.saved_tensors
        need_x, need_w1, need_w2, need_add, need_weight, need_bias, _ = ctx.needs_input_grad
        g = _rows(grad_y)  # (n, l*s)
        R, Lt = expand_factors(w1, w2)
        grad_h = g @ Lt.T  # (n, k*q)
        grad_x = grad_w1 = grad_w2 = grad_weight = grad_bias = None
        if need_x:
            grad_x = ((g @ weight).addmm_(grad_h, R) if weight is not None else grad_h @ R).reshape(ctx.x_shape)
        if need_w1:
            grad_w1 = first_factor_grad(grad_h, x2, w1.shape[0])
        if need_w2:
            grad_w2 = second_factor_grad(h if h is not None else x2 @ R.T, g, w2.shape[0])
        if need_weight:
            grad_weight = g.T @ x2
        if need_bias:
            grad_bias = g.sum(0)
        return grad_x, grad_w1, grad_w2, (grad_y if need_add else None), grad_weight, grad_bias, None


class BmmFunction(torch.autograd.Function):
    """``add + x @ M.T`` block-major: ``(k, n, p) @ blkdiag1.T``, the middle permuted to
    ``(l, n, r)``, ``@ blkdiag2.T``, the output interleaved (unbatched factors, no padding)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(
        x: torch.Tensor,  # (..., k*p)
        blkdiag1: torch.Tensor,  # (k, q, p)
        blkdiag2: torch.Tensor,  # (l, s, r)
        add: torch.Tensor | None,  # (..., l*s) or None
        save_middle: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:  # (..., l*s), the middle (l, n, r)
        k, q, p = blkdiag1.shape
        l, s, r = blkdiag2.shape
        x2 = _rows(x)
        h2 = _middle(x2, blkdiag1, r, l)  # (l, n, r)
        y = torch.bmm(h2, blkdiag2.transpose(1, 2)).permute(1, 2, 0)  # (n, s, l): output e*l + d
        if add is not None:  # the add makes the permuted copy
            y = _rows(add).reshape(-1, s, l) + y
        return y.reshape(*x.shape[:-1], s * l), h2

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        x, blkdiag1, blkdiag2, _, save_middle = inputs
        h2 = output[1]
        ctx.mark_non_differentiable(h2)
        ctx.save_for_backward(_rows(x), blkdiag1, blkdiag2, h2 if save_middle else None)
        ctx.x_shape = x.shape

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor, _grad_h2: torch.Tensor | None):  # (..., l*s)
        x2, w1, w2, h2 = ctx.saved_tensors
        need_x, need_w1, need_w2, need_add, _ = ctx.needs_input_grad
        k, q, p = w1.shape
        l, s, r = w2.shape
        if h2 is None:
            h2 = _middle(x2, w1, r, l)
        # complex tensors: autograd's convention is grad_a = grad_out @ conj(b) for out = a @ b
        # (conj() of a real tensor is the tensor itself, no copy)
        gy = _rows(grad_y).reshape(-1, s, l).permute(2, 0, 1)  # (l, n, s)
        grad_w2 = torch.bmm(gy.transpose(1, 2), h2.conj()) if need_w2 else None  # (l, s, r)
        grad_h = second_to_middle(torch.bmm(gy, w2.conj()), k, q)  # (k, n, q)
        grad_w1 = None
        if need_w1:
            grad_w1 = torch.bmm(grad_h.transpose(1, 2), x2.conj().reshape(-1, k, p).transpose(0, 1))
        grad_x = None
        if need_x:
            grad_x = torch.bmm(grad_h, w1.conj()).transpose(0, 1).reshape(ctx.x_shape)
        return grad_x, grad_w1, grad_w2, (grad_y if need_add else None), None


def _middle(x2: torch.Tensor, blkdiag1: torch.Tensor, r: int, l: int) -> torch.Tensor:
    """(n, k*p) -> the middle, laid out for the second factor: (l, n, r)."""
    k, _, p = blkdiag1.shape
    h = torch.bmm(x2.reshape(-1, k, p).transpose(0, 1), blkdiag1.transpose(1, 2))  # (k, n, q)
    return middle_to_second(h, r, l)


def multiply_einsum(x: torch.Tensor, blkdiag1: torch.Tensor, blkdiag2: torch.Tensor) -> torch.Tensor:
    """Stacks of factors ``(*batch, k, q, p)`` / ``(*batch, l, s, r)`` on ``x`` of shape
    ``(*batch, n, k*p)`` (size-1 batch dims broadcast), by autograd."""
    k, q, p = blkdiag1.shape[-3:]
    l, s, r = blkdiag2.shape[-3:]
    nbatch = blkdiag1.dim() - 3
    if nbatch:  # broadcast factors over the token dim of x: (*batch, 1, k, q, p)
        blkdiag1 = blkdiag1.unsqueeze(-4)
        blkdiag2 = blkdiag2.unsqueeze(-4)
    lead = x.shape[:-1]
    xb = x.reshape(*lead, k, p)  # (..., k, p)
    h = torch.einsum("...kp,...kqp->...kq", xb, blkdiag1)  # (..., k, q)
    h = h.reshape(*h.shape[:-2], r, l).transpose(-1, -2)  # (..., l, r): block d takes h[c*l + d]
    y = torch.einsum("...lr,...lsr->...ls", h, blkdiag2)  # (..., l, s)
    return y.transpose(-1, -2).reshape(*y.shape[:-2], s * l)  # output e*l + d
