"""A fused Triton kernel for the Monarch multiply (forward), imported lazily.

One program computes a tile of ``BLOCK_N`` rows of ``x`` for one output group ``d``: the
``r`` middle values ``h[:, c*l + d]`` it needs (each a dot of one ``blkdiag1`` row with one
input chunk) stay in registers, then the group's ``s`` outputs ``y[:, e*l + d]`` are written
straight to their interleaved positions. The middle vector never goes to memory and no
permutation copy is made.

Backward: a documented fallback. :class:`MonarchTritonFunction` recomputes the product with
the PyTorch ``bmm`` path under autograd in ``backward`` (gradients exactly those of the
reference multiply), so only the forward is fused.

Tested on CPU through Triton's interpreter (``TRITON_INTERPRET=1`` set before this module
is imported).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .multiply import _multiply_bmm


@triton.jit
def _monarch_fwd_kernel(
    x_ptr,
    w1_ptr,
    w2_ptr,
    y_ptr,
    n_rows,
    K: tl.constexpr,
    Q: tl.constexpr,
    P: tl.constexpr,
    L: tl.constexpr,
    S: tl.constexpr,
    R: tl.constexpr,
    R_PAD: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_S: tl.constexpr,
):
    pid_n = tl.program_id(0)
    d = tl.program_id(1)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < n_rows
    cols_r = tl.arange(0, R_PAD)
    h = tl.zeros((BLOCK_N, R_PAD), dtype=tl.float32)
    for c in range(R):  # middle index j = c*L + d = a*Q + b
        j = c * L + d
        a = j // Q
        b = j % Q
        acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
        for t0 in range(0, P, BLOCK_P):
            t = t0 + tl.arange(0, BLOCK_P)
            t_ok = t < P
            xv = tl.load(
                x_ptr + rows[:, None] * (K * P) + a * P + t[None, :], mask=row_ok[:, None] & t_ok[None, :], other=0.0
            ).to(tl.float32)
            wv = tl.load(w1_ptr + (a * Q + b) * P + t, mask=t_ok, other=0.0).to(tl.float32)
            acc += tl.sum(xv * wv[None, :], axis=1)
        h = tl.where(cols_r[None, :] == c, acc[:, None], h)
    for e0 in range(0, S, BLOCK_S):
        e = e0 + tl.arange(0, BLOCK_S)
        e_ok = e < S
        # w2[d, e, c] laid out (L, S, R): a (R_PAD, BLOCK_S) tile of its transpose
        w2 = tl.load(
            w2_ptr + d * S * R + e[None, :] * R + cols_r[:, None], mask=(cols_r[:, None] < R) & e_ok[None, :], other=0.0
        ).to(tl.float32)
        out = tl.sum(h[:, :, None] * w2[None, :, :], axis=1)  # (BLOCK_N, BLOCK_S)
        tl.store(
            y_ptr + rows[:, None] * (L * S) + e[None, :] * L + d,
            out.to(y_ptr.dtype.element_ty),
            mask=row_ok[:, None] & e_ok[None, :],
        )


def monarch_forward_triton(
    x: torch.Tensor, blkdiag1: torch.Tensor, blkdiag2: torch.Tensor, block_n: int = 32
) -> torch.Tensor:
    """``x`` (..., k*p) -> (..., l*s) with the fused kernel (unbatched factors)."""
    k, q, p = blkdiag1.shape
    l, s, r = blkdiag2.shape
    lead = x.shape[:-1]
    x2 = x.reshape(-1, k * p).contiguous()
    n = x2.shape[0]
    y = torch.empty(n, l * s, device=x.device, dtype=x.dtype)
    if n == 0:
        return y.reshape(*lead, l * s)
    grid = (triton.cdiv(n, block_n), l)
    _monarch_fwd_kernel[grid](
        x2,
        blkdiag1.contiguous(),
        blkdiag2.contiguous(),
        y,
        n,
        K=k,
        Q=q,
        P=p,
        L=l,
        S=s,
        R=r,
        R_PAD=triton.next_power_of_2(r),
        BLOCK_N=block_n,
        BLOCK_P=min(64, triton.next_power_of_2(p)),
        BLOCK_S=min(64, triton.next_power_of_2(s)),
    )
    return y.reshape(*lead, l * s)


class MonarchTritonFunction(torch.autograd.Function):
    """Fused forward; backward by recomputation through the PyTorch bmm path."""

    @staticmethod
    def forward(ctx, x, blkdiag1, blkdiag2):
        ctx.save_for_backward(x, blkdiag1, blkdiag2)
        return monarch_forward_triton(x, blkdiag1, blkdiag2)

    @staticmethod
    def backward(ctx, grad_y):
        x, blkdiag1, blkdiag2 = ctx.saved_tensors
        with torch.enable_grad():
            inputs = [
                t.detach().requires_grad_(need)
                for t, need in zip((x, blkdiag1, blkdiag2), ctx.needs_input_grad, strict=True)
            ]
            y = _multiply_bmm(*inputs)
            wanted = [t for t in inputs if t.requires_grad]
            grads = iter(torch.autograd.grad(y, wanted, grad_y) if wanted else ())
        return tuple(next(grads) if t.requires_grad else None for t in inputs)
