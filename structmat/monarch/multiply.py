"""``monarch_multiply``: ``y = x @ M.T`` for Monarch factors, on the path :func:`.dispatch.select_path`
picks (the paths: :mod:`.dispatch`; their autograd: :mod:`.functions`, :mod:`.triton_kernel`)."""

from __future__ import annotations

import torch

from .dispatch import Path, select_path
from .functions import BmmFunction, ExpandedFunction, multiply_einsum


def monarch_multiply(
    x: torch.Tensor,  # (..., k*p); with stacked factors (*batch, n, k*p)
    blkdiag1: torch.Tensor,  # (*batch, k, q, p)
    blkdiag2: torch.Tensor,  # (*batch, l, s, r)
    *,
    add: torch.Tensor | None = None,  # like the result
    recompute_middle: bool = False,
) -> torch.Tensor:  # (..., l*s)
    """Multiply ``x`` by the Monarch matrix of the two factors (no padding, no checks: the
    :class:`~structmat.Monarch` module pads, crops and checks).

    ``add``: return ``add + x @ M.T`` with the add fused into the last step (``addmm`` on the
    expanded path, the output permutation's copy on the bmm path), so the update never exists
    as a tensor of its own. ``recompute_middle``: keep only ``x`` for backward and recompute the
    middle ``(n, k*q)`` activations there (what an adapter wants; see :mod:`.functions`).
    """
    return run_path(
        select_path(x, blkdiag1, blkdiag2), x, blkdiag1, blkdiag2, add=add, save_middle=not recompute_middle
    )


def run_path(
    path: Path,
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
    if path in (Path.EXPANDED_WITH_BASE, Path.EXPANDED, Path.BMM):
        device_type = x.device.type
        if torch.is_autocast_enabled(device_type):
            dtype = torch.get_autocast_dtype(device_type)
            x, blkdiag1, blkdiag2, add, weight, bias = (
                _autocast(t, dtype) for t in (x, blkdiag1, blkdiag2, add, weight, bias)
            )
            with torch.autocast(device_type, enabled=False):
                return _run_function(path, x, blkdiag1, blkdiag2, add, weight, bias, save_middle)
        return _run_function(path, x, blkdiag1, blkdiag2, add, weight, bias, save_middle)
    if path is Path.TRITON:
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
    if path is Path.EXPANDED_WITH_BASE:
        return ExpandedFunction.apply(x, blkdiag1, blkdiag2, None, weight, bias, save_middle)[0]
    if path is Path.EXPANDED:
        return ExpandedFunction.apply(x, blkdiag1, blkdiag2, add, None, None, save_middle)[0]
    return BmmFunction.apply(x, blkdiag1, blkdiag2, add, save_middle)[0]
