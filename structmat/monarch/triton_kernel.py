"""A fused Triton kernel for the Monarch multiply, forward and backward, imported lazily.

One program owns ``BLOCK_N`` rows. It streams its rows of the input once, accumulating the
middle ``h = x @ R.T`` (``(BLOCK_N, k*q)``, in registers), then streams the output once,
writing ``y = h @ Lt`` tile by tile (``R``, ``Lt``: :func:`.factors.expand_factors`). The
factors are read straight from ``blkdiag1`` and ``blkdiag2`` (the latter laid out ``(r, s, l)``
by one small copy per call, so that its reads run along the output), with the block structure
and both permutations in the index arithmetic: no activation is permuted or copied, and the only
activations touched are one read of ``x`` and one write of ``y`` (plus the small middle, kept for
backward). The input gradient is the same kernel run the other way,
``grad_x = (grad_y @ Lt.T) @ R``, which also leaves ``grad_h``; the two factor gradients are then
one GEMM and one strided bmm (``factors.second_factor_grad``, ``factors.first_factor_grad``).

The middle stays in registers, so the kernel takes middles ``k*q`` of at most
:data:`MAX_MIDDLE` (MoRe adapters: ``nblocks * rank``); :func:`supports` says which calls it
takes, and ``monarch_multiply`` uses the PyTorch paths for the rest. float32 inputs use
``tf32x3`` dots (three TF32 tensor-core products, float32 accuracy); float16/bfloat16 use
their own tensor-core dots with float32 accumulation.

Tested on CPU through Triton's interpreter (``TRITON_INTERPRET=1`` set before this module is
imported) and on CUDA where present.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .factors import first_factor_grad, middle_width, second_factor_grad

MAX_MIDDLE = 128
_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# Launch configuration chosen by benchmarks/bench_triton.py's sweep on an H100 (the first two
# entries were within 1% of each other); triton_multiply(..., config=...) takes another.
DEFAULT_CONFIG = {"block_n": 16, "block_a": 128, "block_b": 128, "num_warps": 4, "num_stages": 3}


def supports(x: torch.Tensor, blkdiag1: torch.Tensor, blkdiag2: torch.Tensor) -> bool:
    """Whether the kernel takes this call: unbatched factors, a middle ``k*q`` of at most
    :data:`MAX_MIDDLE`, one floating dtype among float32/float16/bfloat16 for all three."""
    return (
        blkdiag1.dim() == 3
        and middle_width(blkdiag1) <= MAX_MIDDLE
        and x.dtype in _DTYPES
        and x.dtype == blkdiag1.dtype == blkdiag2.dtype
    )


@triton.jit
def _first_tile(w1_ptr, a, t, j, P: tl.constexpr, Q: tl.constexpr, KQ: tl.constexpr):
    """``R.T[a*p + t, j]`` for columns ``t`` of block ``a``, a ``(len(t), len(j))`` tile:
    ``R[a*q + b, a*p + t] = blkdiag1[a, b, t]``. Only the block's ``q`` columns are read,
    contiguous along ``t``."""
    mask = (t[:, None] < P) & (j[None, :] // Q == a) & (j[None, :] < KQ)
    return tl.load(w1_ptr + j[None, :] * P + t[:, None], mask=mask, other=0.0)


@triton.jit
def _second_tile(w2t_ptr, j, o, L: tl.constexpr, OUT: tl.constexpr, KQ: tl.constexpr):
    """``Lt[j, o]`` as a ``(len(j), len(o))`` tile, from ``blkdiag2`` laid out ``(r, s, l)``
    (``w2t[c, e, d] = blkdiag2[d, e, c]``, so ``Lt[c*l + d, e*l + d] = w2t[c*l*s + e*l + d]``):
    ``r`` entries per output, contiguous along ``o``."""
    mask = (j[:, None] % L == o[None, :] % L) & (j[:, None] < KQ) & (o[None, :] < OUT)
    return tl.load(w2t_ptr + (j // L)[:, None] * OUT + o[None, :], mask=mask, other=0.0)


@triton.jit
def _monarch_kernel(
    a_ptr,  # forward: x (n, IN); backward: grad_y (n, OUT)
    w1_ptr,  # (K, Q, P)
    w2t_ptr,  # (R, S, L): blkdiag2.permute(2, 1, 0)
    out_ptr,  # forward: y (n, OUT); backward: grad_x (n, IN)
    mid_ptr,  # forward: h (n, KQ); backward: grad_h (n, KQ)
    add_ptr,  # like out_ptr, added to the result when HAS_ADD
    n_rows,
    K: tl.constexpr,
    P: tl.constexpr,
    Q: tl.constexpr,
    L: tl.constexpr,
    OUT: tl.constexpr,
    KQ: tl.constexpr,
    KQ_PAD: tl.constexpr,
    BACKWARD: tl.constexpr,
    HAS_ADD: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_A: tl.constexpr,
    BLOCK_B: tl.constexpr,
):
    IN: tl.constexpr = K * P
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < n_rows
    rows = rows.to(tl.int64)  # n * width can pass 2**31
    j = tl.arange(0, KQ_PAD)
    dtype = a_ptr.dtype.element_ty
    # pass 1: the middle (BLOCK_N, KQ_PAD) from one read of this program's rows of a
    h = tl.zeros((BLOCK_N, KQ_PAD), dtype=tl.float32)
    if BACKWARD:  # grad_h = grad_y @ Lt.T
        for o0 in range(0, OUT, BLOCK_B):
            o = o0 + tl.arange(0, BLOCK_B)
            gy = tl.load(a_ptr + rows[:, None] * OUT + o[None, :], mask=row_ok[:, None] & (o < OUT)[None, :])
            w = tl.trans(_second_tile(w2t_ptr, j, o, L, OUT, KQ))  # (BLOCK_B, KQ_PAD)
            h = tl.dot(gy, w.to(dtype), h, input_precision=PRECISION)
    else:  # h = x @ R.T, block by block
        for blk in range(K):
            for t0 in range(0, P, BLOCK_A):
                t = t0 + tl.arange(0, BLOCK_A)
                xv = tl.load(a_ptr + rows[:, None] * IN + blk * P + t[None, :], mask=row_ok[:, None] & (t < P)[None, :])
                w = _first_tile(w1_ptr, blk, t, j, P, Q, KQ)  # (BLOCK_A, KQ_PAD)
                h = tl.dot(xv, w.to(dtype), h, input_precision=PRECISION)
    hc = h.to(dtype)
    tl.store(mid_ptr + rows[:, None] * KQ + j[None, :], hc, mask=row_ok[:, None] & (j < KQ)[None, :])
    # pass 2: the result, tile by tile, written once
    if BACKWARD:  # grad_x = grad_h @ R, block by block
        for blk in range(K):
            for t0 in range(0, P, BLOCK_A):
                t = t0 + tl.arange(0, BLOCK_A)
                w = tl.trans(_first_tile(w1_ptr, blk, t, j, P, Q, KQ))  # (KQ_PAD, BLOCK_A)
                gx = tl.dot(hc, w.to(dtype), input_precision=PRECISION)
                offs = rows[:, None] * IN + blk * P + t[None, :]
                tl.store(out_ptr + offs, gx.to(dtype), mask=row_ok[:, None] & (t < P)[None, :])
    else:  # y = h @ Lt (+ add)
        for o0 in range(0, OUT, BLOCK_B):
            o = o0 + tl.arange(0, BLOCK_B)
            w = _second_tile(w2t_ptr, j, o, L, OUT, KQ)  # (KQ_PAD, BLOCK_B)
            y = tl.dot(hc, w.to(dtype), input_precision=PRECISION)
            offs = rows[:, None] * OUT + o[None, :]
            ok = row_ok[:, None] & (o < OUT)[None, :]
            if HAS_ADD:
                y += tl.load(add_ptr + offs, mask=ok).to(tl.float32)
            tl.store(out_ptr + offs, y.to(dtype), mask=ok)


def launch(
    a: torch.Tensor,  # forward: x (n, k*p); backward: grad_y (n, l*s); contiguous
    blkdiag1: torch.Tensor,  # (k, q, p), contiguous
    blkdiag2_t: torch.Tensor,  # (r, s, l): blkdiag2.permute(2, 1, 0), contiguous
    backward: bool,
    add: torch.Tensor | None,  # like the result, contiguous
    config: dict,
) -> tuple[torch.Tensor, torch.Tensor]:  # (n, l*s) or (n, k*p); (n, k*q)
    k, q, p = blkdiag1.shape
    r, s, l = blkdiag2_t.shape
    n = a.shape[0]
    out = torch.empty(n, k * p if backward else l * s, device=a.device, dtype=a.dtype)
    mid = torch.empty(n, k * q, device=a.device, dtype=a.dtype)
    if n == 0:
        return out, mid
    cfg = config
    _monarch_kernel[(triton.cdiv(n, cfg["block_n"]),)](
        a,
        blkdiag1,
        blkdiag2_t,
        out,
        mid,
        out if add is None else add,
        n,
        K=k,
        P=p,
        Q=q,
        L=l,
        OUT=l * s,
        KQ=k * q,
        KQ_PAD=max(16, triton.next_power_of_2(k * q)),
        BACKWARD=backward,
        HAS_ADD=add is not None,
        PRECISION="tf32x3" if a.dtype == torch.float32 else "tf32",
        BLOCK_N=cfg["block_n"],
        BLOCK_A=max(16, min(cfg["block_a"], triton.next_power_of_2(p))),
        BLOCK_B=max(16, min(cfg["block_b"], triton.next_power_of_2(l * s))),
        num_warps=cfg["num_warps"],
        num_stages=cfg["num_stages"],
    )
    return out, mid


def kernel_layout(blkdiag1: torch.Tensor, blkdiag2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The factors as the kernel reads them: ``(k, q, p)`` and ``(r, s, l)``, contiguous."""
    return blkdiag1.contiguous(), blkdiag2.permute(2, 1, 0).contiguous()


class MonarchTritonFunction(torch.autograd.Function):
    """``add + x @ M.T`` on 2D ``x`` (n, k*p), forward and backward by the fused kernel.

    Saves ``x`` and the middle ``h`` (n, k*q): ``k*q / (k*p)`` of ``x``'s size, which the
    PyTorch paths would recompute instead."""

    @staticmethod
    def forward(ctx, x, blkdiag1, blkdiag2, add, config):  # x (n, k*p), add (n, l*s) or None
        x = x.contiguous()
        w1, w2t = kernel_layout(blkdiag1, blkdiag2)
        y, h = launch(x, w1, w2t, False, None if add is None else add.contiguous(), config)
        ctx.save_for_backward(x, w1, w2t, h)
        ctx.config = config
        return y

    @staticmethod
    def backward(ctx, grad_y):  # grad_y (n, l*s)
        x, w1, w2t, h = ctx.saved_tensors
        need_x, need_w1, need_w2, need_add, _ = ctx.needs_input_grad
        grad_y = grad_y.contiguous()
        grad_x = grad_w1 = grad_w2 = None
        if need_x or need_w1:
            grad_x, grad_h = launch(grad_y, w1, w2t, True, None, ctx.config)  # (n, k*p), (n, k*q)
            if need_w1:
                grad_w1 = first_factor_grad(grad_h, x, w1.shape[0])
        if need_w2:
            grad_w2 = second_factor_grad(h, grad_y, w2t.shape[2])
        return (grad_x if need_x else None), grad_w1, grad_w2, (grad_y if need_add else None), None


def triton_multiply(
    x: torch.Tensor,  # (..., k*p)
    blkdiag1: torch.Tensor,  # (k, q, p)
    blkdiag2: torch.Tensor,  # (l, s, r)
    *,
    add: torch.Tensor | None = None,  # (..., l*s)
    config: dict | None = None,  # launch configuration, default DEFAULT_CONFIG
) -> torch.Tensor:  # (..., l*s)
    """``add + x @ M.T`` by the fused kernel (calls :func:`supports` must accept)."""
    cfg = DEFAULT_CONFIG if config is None else DEFAULT_CONFIG | config
    x2 = x.reshape(-1, x.shape[-1])
    add2 = None if add is None else add.reshape(x2.shape[0], add.shape[-1])
    y = MonarchTritonFunction.apply(x2, blkdiag1, blkdiag2, add2, cfg)
    return y.reshape(*x.shape[:-1], y.shape[-1])
