"""``monarch_multiply``: ``y = x @ M.T`` for Monarch factors, on the path :func:`.dispatch.select_path`
picks (the paths: :mod:`.dispatch`; their autograd: :mod:`.functions`, :mod:`.triton_kernel`)."""

from __future__ import annotations

import torch

from ..checks import check_float_dtype
from .dispatch import MultiplyPath, select_path
from .functions import BmmFunction, ExpandedFunction, multiply_einsum


def monarch_multiply(
    x: torch.Tensor,  # (..., k*p); with stacked factors (*batch, n, k*p)
    blkdiag1: torch.Tensor,  # (*batch, k, q, p)
    blkdiag2: torch.Tensor,  # (*batch, l, s, r)
    *,
    add: torch.Tensor | None = None,  # like the result
    recompute_middle: bool = False,
) -> torch.Tensor:  # (..., l*s)
    """Multiply ``x`` by the Monarch matrix of the two factors (no padding: the
    :class:`~structmat.Monarch` module pads and crops; arguments are checked and named).

    ``add``: return ``add + x @ M.T`` with the add fused into the last step (``addmm`` on the
    expanded path, the output permutation's copy on the bmm path), so the update never exists
    as a tensor of its own. ``recompute_middle``: keep only ``x`` for backward and recompute the
    middle ``(n, k*q)`` activations there (what an adapter wants; see :mod:`.functions`).
    """
    _check_multiply_args(x, blkdiag1, blkdiag2)
    return run_path(
        select_path(x, blkdiag1, blkdiag2), x, blkdiag1, blkdiag2, add=add, save_middle=not recompute_middle
    )


def _check_multiply_args(x: object, blkdiag1: object, blkdiag2: object) -> None:
    for name, t, dims in (("x", x, 1), ("blkdiag1", blkdiag1, 3), ("blkdiag2", blkdiag2, 3)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        check_float_dtype(name, t.dtype, allow_complex=True)
        if t.dim() < dims or 0 in t.shape[-dims:]:
            raise ValueError(f"{name} must have at least {dims} non-empty dims, got shape {tuple(t.shape)}")
    k, q, p = blkdiag1.shape[-3:]
    l, s, r = blkdiag2.shape[-3:]
    if blkdiag1.shape[:-3] != blkdiag2.shape[:-3] or l * r != k * q:
        raise ValueError(
            f"blkdiag1 (*batch, k, q, p) and blkdiag2 (*batch, l, s, r) need equal batch dims and l*r == k*q, got "
            f"{tuple(blkdiag1.shape)} and {tuple(blkdiag2.shape)}"
        )
    if x.shape[-1] != k * p:
        raise ValueError(f"x must have last dimension k*p={k * p}, got shape {tuple(x.shape)}")
    if not x.device == blkdiag1.device == blkdiag2.device:
        raise ValueError(
            f"x, blkdiag1 and blkdiag2 must be on one device, got {x.device}, {blkdiag1.device}, {blkdiag2.device}"
        )
    real = [d.to_real() if d.is_complex else d for d in (x.dtype, blkdiag1.dtype, blkdiag2.dtype)]
    if not (real[0] == real[1] == real[2] or torch.is_autocast_enabled(x.device.type)):
        raise TypeError(  # one precision; real and complex mix (promoted)
            f"x, blkdiag1 and blkdiag2 must have one dtype, got {x.dtype}, {blkdiag1.dtype}, {blkdiag2.dtype}"
        )


def run_path(
    path: MultiplyPath,
    x: torch.Tensor,
    blkdiag1: torch.Tensor,
    blkdiag2: torch.Tensor,
    *,
    add: torch.Tensor | None = None,
    weight: torch.Tensor | None = None,  # EXPANDED_WITH_BASE: the base nn.Linear's weight and bias
    bias: torch.Tensor | None = None,
    save_middle: bool = True,
) -> torch.Tensor:
    """``add + x @ M.T`` (or ``x @ weight.T + bias + x @ M.T``) on ``path``.

    Under ``torch.autocast`` the Functions' inputs are cast to the autocast dtype (as autocast does
    for a matmul, and ``torch.amp.custom_fwd(cast_inputs=...)`` for a Function) and the Functions
    run with autocast off: forward and backward each in one dtype, and the casts' backward gives
    every float32 factor a float32 gradient."""
    if path in (MultiplyPath.EXPANDED_WITH_BASE, MultiplyPath.EXPANDED, MultiplyPath.BMM):
        device_type = x.device.type
        if torch.is_autocast_enabled(device_type):
            dtype = torch.get_autocast_dtype(device_type)
            x, blkdiag1, blkdiag2, add, weight, bias = (
                _autocast(t, dtype) for t in (x, blkdiag1, blkdiag2, add, weight, bias)
            )
            with torch.autocast(device_type, enabled=False):
                return _run_function(path, x, blkdiag1, blkdiag2, add, weight, bias, save_middle)
        return _run_function(path, x, blkdiag1, blkdiag2, add, weight, bias, save_middle)
    if path is MultiplyPath.TRITON:
        from .triton_kernel import triton_multiply  # lazy: triton is optional

        return triton_multiply(x, blkdiag1, blkdiag2, add=add)
    y = multiply_einsum(x, blkdiag1, blkdiag2)
    return y if add is None else add + y


def _autocast(t: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """``t`` in ``dtype`` where autocast would cast it (floating point, not float64)."""
    if t is None or not t.is_floating_point() or t.dtype in (dtype, torch.float64):
        return t
    return t.to(dtype)


def _run_function(path, x, blkdiag1, blkdiag2, add, weight, bias, save_middle) -> torch.Tensor:
    if path is MultiplyPath.EXPANDED_WITH_BASE:
        return ExpandedFunction.apply(x, blkdiag1, blkdiag2, None, weight, bias, save_middle)[0]
    if path is MultiplyPath.EXPANDED:
        return ExpandedFunction.apply(x, blkdiag1, blkdiag2, add, None, None, save_middle)[0]
    return BmmFunction.apply(x, blkdiag1, blkdiag2, add, save_middle)[0]
