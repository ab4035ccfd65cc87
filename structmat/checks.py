"""Argument validation shared by every structure, fit and adapter.

Every check raises with the name of the offending argument, so users see
``ValueError: rank must be a positive integer, got 0`` rather than an error from deep
inside torch.
"""

from __future__ import annotations

import torch


def check_positive_int(name: str, value: object) -> int:
    """Return ``value`` as an int, or raise naming ``name`` if it is not a positive integer."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def check_rank_fits(rank: int, in_features: int, out_features: int) -> None:
    """Raise naming ``rank`` if it exceeds ``min(in_features, out_features)`` (no added capacity)."""
    if rank > min(in_features, out_features):
        raise ValueError(
            f"rank={rank} is larger than min(in_features, out_features)="
            f"{min(in_features, out_features)}; such a rank adds parameters but no capacity"
        )


def check_float_dtype(name: str, dtype: torch.dtype, allow_complex: bool = False) -> None:
    """Raise TypeError naming ``name`` unless ``dtype`` is floating (or complex if allowed)."""
    if dtype.is_floating_point or (allow_complex and dtype.is_complex):
        return
    kinds = "floating-point or complex" if allow_complex else "floating-point"
    raise TypeError(f"{name} must have a {kinds} dtype, got {dtype}")


def check_finite(name: str, tensor: torch.Tensor) -> None:
    """Raise ValueError naming ``name`` if ``tensor`` holds NaN or inf."""
    if not bool(torch.isfinite(tensor).all()):
        raise ValueError(f"{name} contains NaN or inf values")


def check_matrix(name: str, W: object, allow_complex: bool = False) -> torch.Tensor:
    """Validate a dense matrix or a stack of matrices ``(..., out, in)`` for fitting."""
    if not isinstance(W, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(W).__name__}")
    if W.dim() < 2:
        raise ValueError(
            f"{name} must be a matrix or a stack of matrices of shape (..., out, in), got shape {tuple(W.shape)}"
        )
    check_float_dtype(name, W.dtype, allow_complex=allow_complex)
    if W.shape[-1] == 0 or W.shape[-2] == 0:
        raise ValueError(f"{name} must not be empty, got shape {tuple(W.shape)}")
    check_finite(name, W)
    return W


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)
