"""``Butterfly``: a product of log2(n) sparse factors of 2x2 "twiddle" mixes."""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..base import StructuredLinear
from ..checks import check_batch_shape, check_bool, check_float_dtype, check_positive_int

ButterflyInit = Literal["ortho", "randn", "identity"]


def next_power_of_two(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def bit_reversal_permutation(n: int) -> torch.Tensor:
    """Indices ``perm`` with ``perm[i]`` = i with its log2(n) bits reversed."""
    m = n.bit_length() - 1
    idx = torch.arange(n)
    rev = torch.zeros_like(idx)
    for bit in range(m):
        rev |= ((idx >> bit) & 1) << (m - 1 - bit)
    return rev


class Butterfly(StructuredLinear):
    """A butterfly matrix of size ``n = 2^m``; ``forward(x) = x @ M.T``.

    ``M = B_{m-1} ... B_1 B_0 P`` (increasing stride, the default) where factor ``B_i`` mixes
    entries ``2^i`` apart with its own 2x2 twiddle per pair, and ``P`` is the bit-reversal
    permutation if ``bit_reversal=True`` (the identity otherwise). With
    ``increasing_stride=False`` the factors are applied largest stride first.

    Parameter ``twiddle`` has shape ``(*batch_shape, m, n // 2, 2, 2)``: ``2 n log2 n`` entries.
    Entry ``twiddle[i, b*st + t]`` (``st = 2^i``) maps the pair ``(x[2*st*b + t],
    x[2*st*b + st + t])`` to the same two positions: ``y_o = sum_c twiddle[i, ., o, c] x_c``.

    Sizes that are not powers of two: ``n`` is the next power of two of
    ``max(in_features, out_features)``; inputs are zero-padded to ``n`` and outputs cropped
    to ``out_features``.

    Args:
        in_features: input size; out_features: output size (default ``in_features``).
        complex: complex twiddles (then ``M`` and the outputs are complex).
        init: ``"ortho"`` (random 2x2 rotations: ``M`` orthogonal/unitary),
            ``"randn"`` (Gaussian, variance 1/2 so that the product keeps scale),
            or ``"identity"``.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int | None = None,
        *,
        complex: bool = False,
        increasing_stride: bool = True,
        bit_reversal: bool = False,
        init: ButterflyInit = "ortho",
        batch_shape: tuple[int, ...] = (),
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        check_positive_int("in_features", in_features)
        out_features = in_features if out_features is None else out_features
        check_positive_int("out_features", out_features)
        batch_shape = check_batch_shape("batch_shape", batch_shape)
        for flag, value in (
            ("complex", complex),
            ("increasing_stride", increasing_stride),
            ("bit_reversal", bit_reversal),
        ):
            check_bool(flag, value)
        n = next_power_of_two(max(in_features, out_features, 2))
        m = n.bit_length() - 1
        real_dtype = dtype if dtype is not None else torch.get_default_dtype()
        check_float_dtype("dtype", real_dtype, allow_complex=complex)
        if real_dtype.is_complex:
            real_dtype = real_dtype.to_real()
        twiddle = _init_twiddle((*batch_shape, m, n // 2), init, complex, real_dtype, device)
        super().__init__(in_features, out_features, batch_shape)
        self.n = n
        self.increasing_stride = increasing_stride
        self.bit_reversal = bit_reversal
        self.twiddle = nn.Parameter(twiddle)
        if bit_reversal:
            self.register_buffer("perm", bit_reversal_permutation(n).to(device), persistent=False)
        else:
            self.perm = None

    @property
    def is_complex(self) -> bool:
        return self.twiddle.is_complex()

    @property
    def nfactors(self) -> int:
        return self.twiddle.shape[-4]

    @property
    def max_rank(self) -> int:
        return min(self.in_features, self.out_features)

    def _matmul(self, x: torch.Tensor) -> torch.Tensor:
        n = self.n
        if self.is_complex and not x.is_complex():
            x = x.to(self.twiddle.dtype)
        if x.shape[-1] != n:
            x = F.pad(x, (0, n - x.shape[-1]))
        if self.perm is not None:
            x = x[..., self.perm]
        twiddle = self.twiddle
        if self.batch_shape:  # broadcast over the token dim of x
            twiddle = twiddle.unsqueeze(-5)
        lead = x.shape[:-1]
        strides = range(self.nfactors) if self.increasing_stride else reversed(range(self.nfactors))
        for i in strides:
            st = 1 << i
            tw = twiddle[..., i, :, :, :].reshape(*twiddle.shape[:-4], n // (2 * st), st, 2, 2)
            xb = x.reshape(*lead, n // (2 * st), 2, st)  # (..., blocks, pair member c, t)
            x = torch.einsum("...bct,...btoc->...bot", xb, tw).reshape(*lead, n)
        return x[..., : self.out_features]

    def to_dense(self) -> torch.Tensor:
        eye = torch.eye(self.in_features, dtype=self.twiddle.dtype, device=self.device)
        eye = eye.expand(*self.batch_shape, self.in_features, self.in_features)
        return self._matmul(eye).mT

    def _structure_repr(self) -> str:
        return (
            f"n={self.n}, nfactors={self.nfactors}, complex={self.is_complex}, "
            f"increasing_stride={self.increasing_stride}, bit_reversal={self.bit_reversal}"
        )


def _init_twiddle(shape: tuple[int, ...], init: str, complex: bool, dtype: torch.dtype, device) -> torch.Tensor:
    kw = {"dtype": dtype, "device": device}
    if init == "identity":
        tw = torch.eye(2, **kw).expand(*shape, 2, 2).clone()
        return tw.to(dtype.to_complex()) if complex else tw
    if init == "randn":
        if complex:
            re, im = torch.randn(*shape, 2, 2, **kw), torch.randn(*shape, 2, 2, **kw)
            return torch.complex(re, im) / 2.0
        return torch.randn(*shape, 2, 2, **kw) / math.sqrt(2.0)
    if init == "ortho":
        theta = torch.rand(*shape, **kw) * (2 * math.pi)
        c, s = torch.cos(theta), torch.sin(theta)
        rot = torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)
        if not complex:
            return rot
        phase = torch.polar(torch.ones(*shape, 2, **kw), torch.rand(*shape, 2, **kw) * 2 * math.pi)
        return rot.to(dtype.to_complex()) * phase.unsqueeze(-1)
    raise ValueError(f"init must be 'ortho', 'randn' or 'identity', got {init!r}")


def hadamard_butterfly(n: int, normalized: bool = False, **kwargs) -> Butterfly:
    """The Walsh-Hadamard matrix as an exact real butterfly.

    Every twiddle is ``[[1, 1], [1, -1]]``, so ``to_dense()`` equals
    ``scipy.linalg.hadamard(n)`` (Sylvester order) exactly; with ``normalized=True`` every
    twiddle is divided by sqrt(2) and ``M = hadamard(n) / sqrt(n)`` is orthogonal.
    """
    _check_power_of_two(n, normalized)
    bf = Butterfly(n, init="identity", **kwargs)
    h2 = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=bf.twiddle.dtype, device=bf.device)
    if normalized:
        h2 = h2 / math.sqrt(2.0)
    with torch.no_grad():
        bf.twiddle.copy_(h2.expand_as(bf.twiddle))
    return bf


def dft_butterfly(n: int, normalized: bool = False, **kwargs) -> Butterfly:
    """The DFT matrix ``F[j, k] = exp(-2 pi i jk / n)`` as a complex butterfly (Cooley-Tukey).

    ``M = B_{m-1} ... B_0 P`` with ``P`` the bit-reversal permutation; the stride-``st``
    factor has twiddles ``[[1, w^t], [1, -w^t]]`` with ``w = exp(-2 pi i / (2 st))``.
    ``to_dense()`` equals ``torch.fft.fft(torch.eye(n), dim=0)``; ``normalized=True`` divides
    by sqrt(n) (unitary, ``norm="ortho"``).
    """
    _check_power_of_two(n, normalized)
    bf = Butterfly(n, complex=True, bit_reversal=True, increasing_stride=True, init="identity", **kwargs)
    m = bf.nfactors
    tw = torch.empty(m, n // 2, 2, 2, dtype=bf.twiddle.dtype)
    for i in range(m):
        st = 1 << i
        t = torch.arange(st, dtype=torch.float64)
        w = torch.polar(torch.ones_like(t), -2 * math.pi * t / (2 * st)).to(tw.dtype)  # (st,)
        block = torch.stack([torch.stack([torch.ones_like(w), w], -1), torch.stack([torch.ones_like(w), -w], -1)], -2)
        tw[i] = block.repeat(n // (2 * st), 1, 1)  # (n/2, 2, 2): index b*st + t
    if normalized:
        tw = tw / math.sqrt(2.0)
    with torch.no_grad():
        bf.twiddle.copy_(tw.to(bf.device).expand_as(bf.twiddle))
    return bf


def _check_power_of_two(n: int, normalized: bool) -> None:
    check_bool("normalized", normalized)
    check_positive_int("n", n)
    if n < 2 or n & (n - 1):
        raise ValueError(f"n must be a power of two >= 2, got {n}")
