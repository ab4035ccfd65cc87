"""The Monarch multiply ``y = x @ M.T`` with ``M`` given by two block-diagonal factors.

Convention (docs/monarch-math.md, the one of the reference ``blockdiag_butterfly_multiply``):
split ``x`` into ``k`` chunks of ``p``, apply ``blkdiag1`` per chunk, re-read the middle
vector of length ``k*q`` as ``(r, l)`` (block ``d`` takes the strided slice ``d, l+d, ...``),
apply ``blkdiag2`` per block and interleave the outputs (output ``e*l + d`` from block ``d``).
Never a dense permutation matrix: the permutations are reshapes and transposes.

Paths, same result, picked per shape by :func:`monarch_multiply` for unbatched factors:

- ``bmm``: block-major, two batched matmuls, ``k/l`` times fewer FLOPs, but the middle and
  output permutations are copies of ``(n, k*q)`` and ``(n, out)`` activations (and their
  gradients in backward);
- ``expanded``: the factors written out as block-sparse ``(k*q, in)`` and ``(k*q, out)``
  matrices, the second with the permutations folded in (``diag_embed``, built per call,
  ``k*q*(in+out)`` numbers), then two plain matmuls: no activation copies at all. It does
  ``nblocks`` times the FLOPs of ``bmm``, which is cheap while the middle width ``k*q`` is
  small, the usual case for MoRe adapters (``k*q = nblocks * rank``), and then it is the
  faster one (memory traffic dominates);
- ``einsum``: broadcasts over stacks of factors;
- ``triton`` (optional, CUDA): the fused kernel of ``triton_kernel.py``, forward and backward;
  :func:`set_backend` says when it is taken.
"""

from __future__ import annotations

import functools
import importlib.util
import os

import torch

_BACKEND = os.environ.get("STRUCTMAT_MONARCH_BACKEND", "auto")
# The expanded path is used while the middle width k*q is at most this (see the module doc).
EXPANDED_MAX_MIDDLE = int(os.environ.get("STRUCTMAT_EXPANDED_MAX_MIDDLE", "32"))
# Backend "auto" on CUDA takes the Triton kernel for middles above EXPANDED_MAX_MIDDLE up to this:
# there it beat the bmm path on an H100; narrower ones take the expanded path, wider ones bmm.
TRITON_AUTO_MAX_MIDDLE = 64


def set_backend(backend: str) -> None:
    """Choose the multiply: ``"auto"`` (on CUDA with triton installed, the kernel for middles
    ``nblocks * rank`` of 33 to 64, where it beat the bmm path on an H100; PyTorch otherwise:
    the expanded path's cuBLAS GEMMs were faster for narrower middles, bmm for wider; README),
    ``"torch"`` (always PyTorch bmm/expanded/einsum) or ``"triton"`` (the fused kernel
    wherever it applies, on CPU only under ``TRITON_INTERPRET=1``). The kernel takes unbatched
    factors with a middle ``nblocks * rank`` of at most 128 in float32/float16/bfloat16
    (``triton_kernel.supports``); other calls, and calls under ``torch.compile`` or autocast,
    take the PyTorch paths with either setting. Also settable with the environment variable
    ``STRUCTMAT_MONARCH_BACKEND``."""
    global _BACKEND
    if backend not in ("auto", "torch", "triton"):
        raise ValueError(f"backend must be 'auto', 'torch' or 'triton', got {backend!r}")
    if backend == "triton" and not _triton_installed():
        raise ModuleNotFoundError("backend='triton' needs triton: pip install 'structmat[triton]'")
    _BACKEND = backend


def get_backend() -> str:
    return _BACKEND


@functools.cache
def _triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def _use_triton(x: torch.Tensor, blkdiag1: torch.Tensor, blkdiag2: torch.Tensor) -> bool:
    """Whether this call goes to the fused Triton kernel: backend ``"triton"``, or ``"auto"``
    on CUDA with triton installed for middles from :data:`EXPANDED_MAX_MIDDLE` + 1 to
    :data:`TRITON_AUTO_MAX_MIDDLE`; never under ``torch.compile`` or autocast, and only for
    calls the kernel takes (``triton_kernel.supports``: unbatched factors, a middle of at most
    128, float32/float16/bfloat16 throughout)."""
    if _BACKEND == "torch" or torch.compiler.is_compiling() or not _triton_installed():
        return False
    too_wide = middle_width(blkdiag1) > TRITON_AUTO_MAX_MIDDLE
    if _BACKEND == "auto" and (not x.is_cuda or uses_expanded(blkdiag1) or too_wide):
        return False  # outside that range a PyTorch path was faster on an H100 (README)
    if torch.is_autocast_enabled(x.device.type):
        return False
    from .triton_kernel import supports  # lazy: triton is optional

    return supports(x, blkdiag1, blkdiag2)


def middle_width(blkdiag1: torch.Tensor) -> int:
    """The middle width ``k*q`` of factors ``blkdiag1`` (``(*batch, k, q, p)``), which decides
    the path (see the module doc)."""
    return blkdiag1.shape[-3] * blkdiag1.shape[-2]


def uses_expanded(blkdiag1: torch.Tensor) -> bool:
    """Whether unbatched factors take the expanded path: middle width ``k*q`` at most
    :data:`EXPANDED_MAX_MIDDLE`."""
    return middle_width(blkdiag1) <= EXPANDED_MAX_MIDDLE


def monarch_multiply(
    x: torch.Tensor,  # (..., k*p)
    blkdiag1: torch.Tensor,  # (*batch, k, q, p)
    blkdiag2: torch.Tensor,  # (*batch, l, s, r)
    recompute_middle: bool = False,
    add: torch.Tensor | None = None,  # (..., l*s)
) -> torch.Tensor:  # (..., l*s)
    """Multiply ``x`` by the Monarch matrix of the two factors (no padding, no checks).

    With factors carrying batch dims ``(*batch,)``, ``x`` must be ``(*batch, n, k*p)``.
    ``recompute_middle`` (unbatched factors): save only ``x`` for backward and recompute the
    middle ``(n, k*q)`` activations there; one extra small bmm in exchange for not keeping
    them (what an adapter wants: its input is kept by the frozen layer anyway).
    ``add`` (the result's shape and dtype): return ``add + x @ M.T`` with the add fused into
    the last step (``addmm`` on the expanded path, the output permutation's copy on the bmm
    path), so that the update never exists as a tensor of its own.
    """
    if blkdiag1.dim() == 3:
        expanded = uses_expanded(blkdiag1)
        triton = _use_triton(x, blkdiag1, blkdiag2)
        if triton or (recompute_middle and torch.is_grad_enabled()):
            if triton:
                from .triton_kernel import MonarchTritonFunction as fn  # lazy: triton is optional
            else:
                fn = _ExpandedRecompute if expanded else _MonarchRecompute
            x2 = x.reshape(-1, x.shape[-1])
            add2 = None if add is None else add.reshape(x2.shape[0], add.shape[-1])
            y = fn.apply(x2, blkdiag1, blkdiag2, add2)
            return y.reshape(*x.shape[:-1], y.shape[-1])
        return (_multiply_expanded if expanded else _multiply_bmm)(x, blkdiag1, blkdiag2, add)
    y = _multiply_einsum(x, blkdiag1, blkdiag2)
    return y if add is None else add + y


def _multiply_bmm(
    x: torch.Tensor, blkdiag1: torch.Tensor, blkdiag2: torch.Tensor, add: torch.Tensor | None = None
) -> torch.Tensor:
    k, q, p = blkdiag1.shape
    l, s, r = blkdiag2.shape
    lead = x.shape[:-1]
    xb = x.reshape(-1, k, p).transpose(0, 1)  # (k, n, p)
    h = _middle_to_second(torch.bmm(xb, blkdiag1.transpose(1, 2)), r, l)  # (l, n, r)
    y = torch.bmm(h, blkdiag2.transpose(1, 2)).permute(1, 2, 0)  # (n, s, l): output e*l + d
    if add is not None:  # the add makes the permuted copy
        y = add.reshape(-1, s, l) + y
    return y.reshape(*lead, s * l)


def expand_factors(
    blkdiag1: torch.Tensor,  # (k, q, p)
    blkdiag2: torch.Tensor,  # (l, s, r)
) -> tuple[torch.Tensor, torch.Tensor]:  # (k*q, k*p), (k*q, l*s)
    """The two factors as plain matrices ``R`` (block diagonal) and ``Lt`` (block diagonal with
    the middle and output permutations folded in, stored transposed), so that the Monarch
    matrix is ``Lt.T @ R`` and ``y = (x @ R.T) @ Lt``.

    Both are ``(k*q, features)`` row-major: every product of the forward and backward then
    has its long dimension contiguous (MKL runs ``grad_y.T @ h`` with a short ``h`` up to
    10x slower than ``h.T @ grad_y``, and autograd picks the former for a transposed view).
    """
    return expand_first(blkdiag1), expand_second(blkdiag2)


def expand_first(blkdiag1: torch.Tensor) -> torch.Tensor:  # (k, q, p) -> (k*q, k*p)
    """``R[a*q + b, a*p + i] = blkdiag1[a, b, i]`` (see :func:`expand_factors`)."""
    k, q, p = blkdiag1.shape
    return torch.diag_embed(blkdiag1.permute(1, 2, 0), dim1=0, dim2=2).reshape(k * q, k * p)


def expand_second(blkdiag2: torch.Tensor) -> torch.Tensor:  # (l, s, r) -> (r*l, l*s)
    """``Lt[c*l + d, e*l + d] = blkdiag2[d, e, c]``: middle ``j = c*l + d`` feeds output
    ``e*l + d`` (see :func:`expand_factors`)."""
    l, s, r = blkdiag2.shape
    return torch.diag_embed(blkdiag2.permute(2, 1, 0), dim1=1, dim2=3).reshape(r * l, s * l)


def first_factor_grad(
    grad_h: torch.Tensor,  # (n, k*q), the gradient of the middle x @ R.T
    x: torch.Tensor,  # (n, k*p)
    k: int,
) -> torch.Tensor:  # (k, q, p)
    """The gradient of ``blkdiag1``: one bmm over the blocks, reading ``x`` and ``grad_h``
    through strided views (no copies, and ``k`` times fewer FLOPs than taking the block
    diagonal of ``grad_h.T @ x``)."""
    n, q, p = x.shape[0], grad_h.shape[1] // k, x.shape[1] // k
    return torch.bmm(grad_h.reshape(n, k, q).permute(1, 2, 0), x.reshape(n, k, p).transpose(0, 1))


def second_factor_grad(
    h: torch.Tensor,  # (n, r*l), the middle
    grad_y: torch.Tensor,  # (n, l*s)
    l: int,
) -> torch.Tensor:  # (l, s, r)
    """The gradient of ``blkdiag2``: the entries of ``dLt = h.T @ grad_y`` that ``Lt`` is made
    of (a block copy through the output permutation would cost a pass over ``grad_y``)."""
    r, s = h.shape[1] // l, grad_y.shape[1] // l
    return (h.T @ grad_y).reshape(r, l, s, l).diagonal(dim1=1, dim2=3).permute(2, 1, 0)


def _multiply_expanded(
    x: torch.Tensor, blkdiag1: torch.Tensor, blkdiag2: torch.Tensor, add: torch.Tensor | None = None
) -> torch.Tensor:
    R, Lt = expand_factors(blkdiag1, blkdiag2)
    h = x @ R.T  # (..., k*q)
    if add is None:
        return h @ Lt  # (..., l*s)
    y = torch.addmm(add.reshape(-1, Lt.shape[1]), h.reshape(-1, Lt.shape[0]), Lt)  # (n, l*s)
    return y.reshape(add.shape)


def _middle_to_second(h: torch.Tensor, r: int, l: int) -> torch.Tensor:
    """(k, n, q) -> (l, n, r): the middle index j = a*q + b re-read as j = c*l + d."""
    return h.transpose(0, 1).reshape(-1, r, l).permute(2, 0, 1)


def _second_to_middle(g: torch.Tensor, k: int, q: int) -> torch.Tensor:
    """Inverse of :func:`_middle_to_second`: (l, n, r) -> (k, n, q)."""
    return g.permute(1, 2, 0).reshape(-1, k, q).transpose(0, 1)


def _grad_add(ctx, grad_y: torch.Tensor) -> torch.Tensor | None:
    """The gradient of ``add`` (passed through), when ``add`` was given and needs one."""
    return grad_y if len(ctx.needs_input_grad) > 3 and ctx.needs_input_grad[3] else None


class _MonarchRecompute(torch.autograd.Function):
    """bmm multiply that saves only its inputs; the middle activations are recomputed."""

    @staticmethod
    def forward(ctx, x, blkdiag1, blkdiag2, add=None):  # x (n, k*p), add (n, l*s) or None
        ctx.save_for_backward(x, blkdiag1, blkdiag2)
        return _multiply_bmm(x, blkdiag1, blkdiag2, add)

    @staticmethod
    def backward(ctx, grad_y):  # grad_y (n, l*s)
        x, w1, w2 = ctx.saved_tensors
        k, q, p = w1.shape
        l, s, r = w2.shape
        xb = x.reshape(-1, k, p).transpose(0, 1)  # (k, n, p)
        h2 = _middle_to_second(torch.bmm(xb, w1.transpose(1, 2)), r, l)  # (l, n, r), recomputed
        gy = grad_y.reshape(-1, s, l).permute(2, 0, 1)  # (l, n, s)
        grad_w2 = torch.bmm(gy.transpose(1, 2), h2) if ctx.needs_input_grad[2] else None  # (l, s, r)
        grad_h = _second_to_middle(torch.bmm(gy, w2), k, q)  # (k, n, q)
        grad_w1 = torch.bmm(grad_h.transpose(1, 2), xb) if ctx.needs_input_grad[1] else None  # (k, q, p)
        grad_x = torch.bmm(grad_h, w1).transpose(0, 1).reshape(-1, k * p) if ctx.needs_input_grad[0] else None
        return grad_x, grad_w1, grad_w2, _grad_add(ctx, grad_y)


class _ExpandedRecompute(torch.autograd.Function):
    """Expanded-factor multiply that saves only its inputs; ``x @ R.T`` is recomputed."""

    @staticmethod
    def forward(ctx, x, blkdiag1, blkdiag2, add=None):  # x (n, k*p), add (n, l*s) or None
        ctx.save_for_backward(x, blkdiag1, blkdiag2)
        return _multiply_expanded(x, blkdiag1, blkdiag2, add)

    @staticmethod
    def backward(ctx, grad_y):  # grad_y (n, l*s)
        x, w1, w2 = ctx.saved_tensors
        k, l = w1.shape[0], w2.shape[0]
        R, Lt = expand_factors(w1, w2)
        grad_h = grad_y @ Lt.T  # (n, k*q)
        grad_x = grad_h @ R if ctx.needs_input_grad[0] else None
        grad_w1 = first_factor_grad(grad_h, x, k) if ctx.needs_input_grad[1] else None
        grad_w2 = second_factor_grad(x @ R.T, grad_y, l) if ctx.needs_input_grad[2] else None
        return grad_x, grad_w1, grad_w2, _grad_add(ctx, grad_y)


def _multiply_einsum(x: torch.Tensor, blkdiag1: torch.Tensor, blkdiag2: torch.Tensor) -> torch.Tensor:
    k, q, p = blkdiag1.shape[-3:]
    l, s, r = blkdiag2.shape[-3:]
    nbatch = blkdiag1.dim() - 3
    if nbatch:  # broadcast factors over the token dim of x: (*batch, 1, k, q, p)
        blkdiag1 = blkdiag1.unsqueeze(-4)
        blkdiag2 = blkdiag2.unsqueeze(-4)
    lead = x.shape[:-1]
    xb = x.reshape(*lead, k, p)  # (..., k, p)
    h = torch.einsum("...kp,...kqp->...kq", xb, blkdiag1)  # (..., k, q)
    h = h.reshape(*lead, r, l).transpose(-1, -2)  # (..., l, r): block d takes h[c*l + d]
    y = torch.einsum("...lr,...lsr->...ls", h, blkdiag2)  # (..., l, s)
    return y.transpose(-1, -2).reshape(*lead, s * l)  # output e*l + d
