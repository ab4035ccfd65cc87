"""The one interface every structured linear map in structmat implements.

A :class:`StructuredLinear` acts like ``nn.Linear`` without bias: for ``x`` of shape
``(..., in_features)`` it returns ``x @ M.T`` of shape ``(..., out_features)``, where
``M = to_dense()`` has shape ``(out_features, in_features)``.

A structure may hold a *stack* of matrices (``batch_shape`` non-empty), as returned by the
batched fits. Then its factors carry the leading ``batch_shape`` dimensions, ``to_dense()``
returns ``(*batch_shape, out_features, in_features)`` and ``forward`` takes ``x`` of shape
``(*batch_shape, n, in_features)`` (each matrix of the stack is applied to its own rows;
size-1 batch dims of ``x`` broadcast).

Subclasses implement :meth:`_matmul` and :attr:`max_rank`; they get input checks, batching
rules, ``to_dense``, ``num_params`` and ``repr`` from here.

A module returned by a ``fit_*`` function has ``fit_error``, the achieved relative error
``||W - M||_F / ||W||_F`` (a tensor of shape ``batch_shape``, a buffer that ``.to()`` moves), and
``fit_info`` (a dict of what the fit did); both are ``None`` on a module that was not fitted.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import nn

from .checks import check_batch_shape, check_float_dtype

_COUNTERPART = {
    torch.float32: torch.complex64,
    torch.float64: torch.complex128,
    torch.complex64: torch.float32,
    torch.complex128: torch.float64,
}


class StructuredLinear(nn.Module, ABC):
    """Base class: a linear map ``x -> x @ M.T`` with ``M`` of a given structure."""

    in_features: int
    out_features: int
    batch_shape: torch.Size
    fit_error: torch.Tensor | None  # (*batch_shape,) after a fit, else None
    fit_info: dict | None = None

    def __init__(self, in_features: int, out_features: int, batch_shape: tuple[int, ...] = ()):
        super().__init__()
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        self.batch_shape = torch.Size(check_batch_shape("batch_shape", batch_shape))
        self.register_buffer("fit_error", None, persistent=False)

    # -- to implement -------------------------------------------------------------------
    @abstractmethod
    def _matmul(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (*batch_shape, n, in) or (..., in) when unbatched -> same lead dims, out."""

    @property
    @abstractmethod
    def max_rank(self) -> int:
        """The largest rank any matrix of this structure (with these shapes) can have."""

    def _structure_repr(self) -> str:
        return ""

    def monarch_factors(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(blkdiag1, blkdiag2)`` when this matrix is a product of two block-diagonal factors
        without padding (views of the parameters, so gradients flow), which the fused
        frozen-layer+update path of the adapters runs; ``None`` otherwise (the default)."""
        return None

    # -- shared behaviour ---------------------------------------------------------------
    @property
    def _reference_param(self) -> torch.Tensor:
        return next(self.parameters())

    @property
    def dtype(self) -> torch.dtype:
        return self._reference_param.dtype

    @property
    def device(self) -> torch.device:
        return self._reference_param.device

    @property
    def shape(self) -> torch.Size:
        """``(*batch_shape, out_features, in_features)``, the shape of :meth:`to_dense`."""
        return torch.Size((*self.batch_shape, self.out_features, self.in_features))

    @property
    def num_params(self) -> int:
        """Number of scalars in the parameters (a complex entry counts once)."""
        return sum(p.numel() for p in self.parameters())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (..., in_features) -> ``x @ M.T`` (..., out_features)."""
        self._check_input(x)
        return self._matmul(self._broadcast_batch(x))

    def addmm(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``y + x @ M.T`` in ``y``'s dtype; ``y`` has the shape of ``forward(x)``.

        What an adapter computes (``base(x) + update(x)``); a structure may fuse the add into
        its last product instead of making the update a tensor of its own (Monarch does).
        """
        self._check_input(x)
        if not isinstance(y, torch.Tensor):
            raise TypeError(f"y must be a torch.Tensor, got {type(y).__name__}")
        return self._addmm(y, self._broadcast_batch(x))

    def _addmm(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        update = self._matmul(x)
        if y.shape != update.shape:
            raise ValueError(f"y must have the shape of forward(x), {tuple(update.shape)}, got {tuple(y.shape)}")
        return y + update.to(y.dtype)

    def _check_input(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        check_float_dtype("x", x.dtype, allow_complex=True)
        if x.dim() == 0 or x.shape[-1] != self.in_features:
            raise ValueError(f"x must have last dimension in_features={self.in_features}, got shape {tuple(x.shape)}")
        if x.device != self.device:
            raise ValueError(f"x must be on the module's device {self.device}, got {x.device}")
        if not torch.is_autocast_enabled(x.device.type) and x.dtype not in self._input_dtypes():
            raise TypeError(
                f"x must have the module's dtype {self.dtype} (convert x or the module with .to()), got {x.dtype}"
            )
        nb = len(self.batch_shape)
        if nb:
            if x.dim() != nb + 2 or any(
                xs not in (1, bs) for xs, bs in zip(x.shape[:nb], self.batch_shape, strict=True)
            ):
                raise ValueError(
                    f"x must have shape (*batch_shape, n, in_features) = "
                    f"({', '.join(map(str, self.batch_shape))}, n, {self.in_features}) "
                    f"for this batched {type(self).__name__}, got {tuple(x.shape)}"
                )

    def _broadcast_batch(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` with its size-1 batch dims expanded to ``batch_shape`` (a view)."""
        nb = len(self.batch_shape)
        if nb and x.shape[:nb] != self.batch_shape:
            x = x.expand(*self.batch_shape, *x.shape[nb:])
        return x

    def _input_dtypes(self) -> tuple[torch.dtype, ...]:
        """The dtypes :meth:`forward` takes: the module's, and its complex (real) counterpart:
        a complex module takes real ``x`` as complex, a real one applies to the real and
        imaginary parts of complex ``x``. Under autocast torch casts for the products, so any
        float dtype is taken then."""
        dtype = self.dtype  # (a dict, not dtype.to_complex(): torch.compile traces this)
        return (dtype, _COUNTERPART[dtype]) if dtype in _COUNTERPART else (dtype,)

    def to_dense(self) -> torch.Tensor:
        """The matrix ``M``, of shape ``(*batch_shape, out_features, in_features)``."""
        eye = torch.eye(self.in_features, dtype=self.dtype, device=self.device)
        eye = eye.expand(*self.batch_shape, self.in_features, self.in_features)
        return self._matmul(eye).mT  # rows of eye are e_i; e_i @ M.T is column i of M

    def extra_repr(self) -> str:
        parts = [f"in_features={self.in_features}", f"out_features={self.out_features}"]
        if self.batch_shape:
            parts.append(f"batch_shape={tuple(self.batch_shape)}")
        structure = self._structure_repr()
        if structure:
            parts.append(structure)
        parts.append(f"num_params={self.num_params}, max_rank={self.max_rank}")
        return ", ".join(parts)
