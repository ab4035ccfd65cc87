"""Small helpers shared by the fit_* functions: scale-free relative errors and the working
precision, so that a fit gives the same relative error for ``W`` and ``c * W`` at any scale and
works for half-precision ``W``."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import torch


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a fit computes in: float16/bfloat16 go up to float32 (torch's decompositions
    do not take them, and their range is too small for squared norms); others stay."""
    if dtype in (torch.float16, torch.bfloat16):
        return torch.float32
    if dtype == torch.complex32:
        return torch.complex64
    return dtype


def max_abs(W: torch.Tensor) -> torch.Tensor:
    """``max |W|`` over the last two dims, shape ``(*batch, 1, 1)``, real, in the compute dtype;
    1 where ``W`` is zero (so that dividing by it is always safe)."""
    real = compute_dtype(W.dtype).to_real() if W.is_complex() else compute_dtype(W.dtype)
    if W.is_complex():
        scale = W.detach().abs().amax(dim=(-2, -1), keepdim=True).to(real)
    else:  # without a temporary |W| as large as W
        dims = (-2, -1)
        scale = torch.maximum(W.detach().amax(dims, keepdim=True), -W.detach().amin(dims, keepdim=True)).to(real)
    return torch.where(scale > 0, scale, torch.ones_like(scale))


def normalized(W: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(W / s, s)`` with ``s = max |W|`` per matrix (:func:`max_abs`), ``W / s`` in the compute
    dtype. Decompositions and norms of ``W / s`` neither overflow nor underflow, whatever the
    scale of ``W``; a fit of ``W / s`` scaled back by ``s`` is the fit of ``W``."""
    scale = max_abs(W)
    return W.detach().to(compute_dtype(W.dtype)) / scale, scale


def frobenius_norm2(x: torch.Tensor) -> torch.Tensor:
    """``||x||_F^2`` over the last two dims, shape ``x.shape[:-2]``, float64.

    Accurate in float32 too: torch's float32 norm of a whole matrix accumulates millions of
    squares in float32 (a 4096x4096 one came out 1e-4 to 6e-4 relative low, enough to hide a
    fit's gap to its optimum), so rows are normed in ``x``'s dtype and their squares summed in
    float64. Reads ``x`` in place (any strides).
    """
    return torch.linalg.vector_norm(x, dim=-1).to(torch.float64).square().sum(-1)


def _ratio(num2: torch.Tensor, den2: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``sqrt(num2 / den2)`` in ``dtype``; 0 when both are 0, inf when only ``den2`` is."""
    num, den = num2.sqrt(), den2.sqrt()
    err = torch.where(
        den > 0,
        num / torch.where(den > 0, den, torch.ones_like(den)),
        torch.where(num > 0, torch.full_like(num, float("inf")), torch.zeros_like(num)),
    )
    return err.to(dtype)


def relative_error(W: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
    """``||W - M||_F / ||W||_F`` over the last two dims, shape ``W.shape[:-2]``, in ``W``'s
    real dtype.

    Both are divided by ``max |W|`` first (in float32 at least), so the result does not depend
    on the scale of ``W`` (no overflow to NaN at 1e20 in float32, no underflow to 0 at 1e-25);
    squares are summed in float64 (:func:`frobenius_norm2`).
    A zero ``W`` gives 0 when ``M`` is zero too (nothing to approximate), else inf.
    """
    scale = max_abs(W)
    work = compute_dtype(W.dtype) if not M.is_complex() or W.is_complex() else compute_dtype(M.dtype)
    Ws = W.detach().to(work) / scale
    num2 = frobenius_norm2(Ws - M.detach().to(work) / scale)
    return _ratio(num2, frobenius_norm2(Ws), W.real.dtype if W.is_complex() else W.dtype)


def relative_error_in_parts(W: torch.Tensor, parts: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """:func:`relative_error` of ``W`` and a matrix ``M`` given part by part, so that only one part
    of ``M`` exists at a time (a fit's memory then stays near that of ``W``).

    Args:
        W: ``(*batch, out, in)``, as a fit holds it: ``W / max|W|`` in the compute dtype
            (:func:`normalized`), so it is not rescaled here.
        parts: ``(W_i, M_i)`` pairs whose ``W_i`` (views of ``W``, ``(*batch, rows_i, cols_i)``)
            tile ``W`` exactly once; ``M_i`` is the same part of ``M``, a tensor of its own that
            is overwritten with the residual ``M_i - W_i``.

    Returns:
        ``||W - M||_F / ||W||_F``, shape ``W.shape[:-2]``, in ``W``'s real dtype; 0 when ``W`` and
        ``M`` are zero, inf when only ``W`` is (as :func:`relative_error`).
    """
    num2 = torch.zeros(W.shape[:-2], dtype=torch.float64, device=W.device)
    for W_i, M_i in parts:
        num2 += frobenius_norm2(M_i.sub_(W_i))
        del W_i, M_i  # before the next part is made: one part at a time
    return _ratio(num2, frobenius_norm2(W), W.real.dtype if W.is_complex() else W.dtype)


@contextlib.contextmanager
def seeded(seed: int | None, device: torch.device | str = "cpu") -> Iterator[None]:
    """Random draws inside come from ``seed`` (on the CPU generator and, for a CUDA ``device``,
    that device's), and the global generators are left as they were; ``seed=None``: draw from
    the global generators as usual (they advance)."""
    if seed is None:
        yield
        return
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int or None, got {seed!r}")
    device = torch.device(device)
    cuda = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.random.default_generator.manual_seed(seed)  # not torch.manual_seed: it seeds every GPU too
        for d in cuda:
            with torch.cuda.device(d):
                torch.cuda.manual_seed(seed)
        yield
