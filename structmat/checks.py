"""Argument validation shared by every structure, fit and adapter.

Every check raises with the name of the offending argument, so users see
``ValueError: rank must be a positive integer, got 0`` rather than an error from deep
inside torch.
"""

from __future__ import annotations

import math

import torch


def check_positive_int(name: str, value: object) -> int:
    """Return ``value`` as an int, or raise naming ``name`` if it is not a positive integer."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def check_nonnegative_int(name: str, value: object) -> int:
    """Return ``value`` as an int, or raise naming ``name`` if it is not an integer >= 0."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
    return value


def check_positive_float(name: str, value: object) -> float:
    """Return ``value`` as a float, or raise naming ``name`` unless it is a finite number > 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def check_bool(name: str, value: object, allow_none: bool = False) -> bool | None:
    """``value`` if it is a bool (or None when allowed), else TypeError naming ``name``."""
    if isinstance(value, bool) or (allow_none and value is None):
        return value
    raise TypeError(f"{name} must be True or False{' or None' if allow_none else ''}, got {value!r}")


def check_sequence(name: str, value: object) -> list:
    """``value`` as a list if it is a list, tuple or range (a one-shot iterator, a string or a
    tensor is refused with a TypeError naming ``name``)."""
    if not isinstance(value, (list, tuple, range)):
        raise TypeError(f"{name} must be a list or tuple, got {type(value).__name__}")
    return list(value)


def check_batch_shape(name: str, batch_shape: object) -> tuple[int, ...]:
    """``batch_shape`` as a tuple of positive ints (leading dims of a stack of structures)."""
    if isinstance(batch_shape, torch.Size):
        batch_shape = tuple(batch_shape)
    if not isinstance(batch_shape, (tuple, list)) or not all(
        isinstance(b, int) and not isinstance(b, bool) and b > 0 for b in batch_shape
    ):
        raise ValueError(f"{name} must be a tuple of positive integers, got {batch_shape!r}")
    return tuple(batch_shape)


def check_useful_rank(rank: int, largest_useful: int, structure: str) -> None:
    """The one rule for ranks that add no capacity, used by every structure, fit and adapter.

    A rank is refused when a smaller rank of the same structure and shape already represents
    *every* matrix of that shape: the larger one would only add parameters. ``largest_useful``
    is that smallest saturating rank (the largest rank worth asking for):

    - low rank ``B @ A`` of an ``(out, in)`` matrix: ``min(out, in)``;
    - Monarch with MoRe shapes (``nblocks`` blocks, block rank ``rank``): block ``(d, a)`` of
      ``M`` is any matrix of rank ``<= t(d, a)``, the number of middle indices it owns
      (``floor(rank / nblocks)`` or one more); the structure reaches every matrix once every
      block is saturated, ``t(d, a) >= min(rows, cols)`` of the block
      (:meth:`structmat.monarch.MonarchShape.largest_useful_rank`). When ``nblocks`` divides
      both sizes that is ``min(out, in)``, as for low rank; with padded sizes it can be a
      little more (``Monarch(10, 10, nblocks=4)``: 12).

    Ranks at or below the limit are accepted even when they have more parameters than the dense
    matrix; :func:`structmat.adapters.apply_more` warns about those.
    """
    if rank > largest_useful:
        raise ValueError(
            f"rank={rank} is larger than the largest useful rank {largest_useful} of {structure}: "
            f"rank {largest_useful} already represents every matrix of this shape, so a larger rank "
            f"adds parameters but no capacity; use rank <= {largest_useful}"
        )


def check_float_dtype(name: str, dtype: torch.dtype, allow_complex: bool = False) -> None:
    """Raise TypeError naming ``name`` unless ``dtype`` is floating (or complex if allowed)."""
    if isinstance(dtype, torch.dtype) and (dtype.is_floating_point or (allow_complex and dtype.is_complex)):
        return
    kinds = "floating-point or complex" if allow_complex else "floating-point"
    raise TypeError(f"{name} must have a {kinds} dtype, got {dtype}")


def check_finite(name: str, tensor: torch.Tensor) -> None:
    """Raise ValueError naming ``name`` if ``tensor`` holds NaN or inf.

    From its largest and smallest entries (a NaN propagates to both, an inf reaches one), so no
    tensor of its size is made: ``torch.isfinite`` made 1.75x its size in temporaries, the largest
    allocation of a randomized fit."""
    real = torch.view_as_real(tensor) if tensor.is_complex() else tensor
    if not (bool(torch.isfinite(real.amax())) and bool(torch.isfinite(real.amin()))):
        raise ValueError(f"{name} contains NaN or inf values")


def check_has_data(name: str, tensor: torch.Tensor) -> None:
    """Raise ValueError naming ``name`` for a ``meta`` tensor (a shape without values)."""
    if tensor.is_meta:
        raise ValueError(f"{name} is a meta tensor (a shape without values); pass a tensor with data")


def check_matrix(name: str, W: object, allow_complex: bool = False) -> torch.Tensor:
    """Validate a dense matrix or a stack of matrices ``(..., out, in)`` for fitting."""
    if not isinstance(W, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(W).__name__}")
    if W.dim() < 2:
        raise ValueError(
            f"{name} must be a matrix or a stack of matrices of shape (..., out, in), got shape {tuple(W.shape)}"
        )
    check_float_dtype(name, W.dtype, allow_complex=allow_complex)
    if W.numel() == 0:
        raise ValueError(f"{name} must not be empty, got shape {tuple(W.shape)}")
    check_has_data(name, W)
    check_finite(name, W)
    return W


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)
