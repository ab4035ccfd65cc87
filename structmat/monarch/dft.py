"""``dft_monarch``: the discrete Fourier transform as a complex Monarch matrix (Cooley-Tukey).

With ``n = n1 * n2``, input index ``i = n2*t + a`` (``t < n1``, ``a < n2``) and output index
``m = b + n1*e`` (``b < n1``, ``e < n2``)::

    w^(m i) = w_n1^(b t) * w_n^(a b) * w_n2^(a e),      w_N = exp(-2 pi i / N)

(the term ``w^(n t e)`` is 1). In the multiply convention of docs/monarch-math.md, after the
input permutation ``x_perm[a*n1 + t] = x[n2*t + a]``: chunk ``a`` of ``blkdiag1`` is the size-n1
DFT with the twiddles ``w_n^(a b)`` folded into its rows, the middle index ``a*n1 + b`` is
re-read as ``c*l + d`` with ``l = n1`` (so ``d = b``, ``c = a``), block ``d`` of ``blkdiag2`` is
the size-n2 DFT, and output ``e*n1 + b`` is exactly ``m``: no output permutation.
"""

from __future__ import annotations

import math

import torch

from ..checks import check_bool, check_positive_int
from .module import Monarch


def _default_sizes(n: int) -> tuple[int, int]:
    """The divisor pair of ``n`` closest to ``sqrt(n)``, the smaller first."""
    n1 = max(d for d in range(1, math.isqrt(n) + 1) if n % d == 0)
    return n1, n // n1


def _powers(exponent: torch.Tensor, size: int, sign: float) -> torch.Tensor:
    """``exp(sign * 2 pi i * exponent / size)`` in complex128, the exponent reduced mod ``size``."""
    angle = (sign * 2 * math.pi / size) * (exponent % size).to(torch.float64)
    return torch.polar(torch.ones_like(angle), angle)


def dft_monarch(
    n: int,
    sizes: tuple[int, int] | None = None,
    *,
    inverse: bool = False,
    normalized: bool = False,
    dtype: torch.dtype = torch.complex64,
    device: torch.device | str | None = None,
) -> tuple[Monarch, torch.Tensor]:
    """The ``n``-point DFT as a complex :class:`Monarch` ``M`` and an input permutation ``perm``.

    ``M(x[..., perm])`` equals ``torch.fft.fft(x)`` (``torch.fft.ifft(x)`` with
    ``inverse=True``; ``norm="ortho"`` with ``normalized=True``): the DFT is not a Monarch matrix
    by itself in this multiply convention (every block would have full rank), only up to this
    permutation, as in Dao et al. and the reference's ``ButterflyFFT``. Entrywise,
    ``M.to_dense()[m, j] = exp(-2 pi i * m * perm[j] / n)`` (times the normalisation).

    Args:
        n: transform size, any positive integer (``n = n1 * n2``).
        sizes: ``(n1, n2)`` with ``n1 * n2 == n``; default the divisor pair closest to
            ``sqrt(n)``. ``blkdiag1`` is ``(n2, n1, n1)``: ``n2`` DFTs of size ``n1`` with the
            twiddle factors folded in; ``blkdiag2`` is ``(n1, n2, n2)``: ``n1`` DFTs of size ``n2``.
        inverse: the inverse transform (conjugate twiddles, divided by ``n`` unless normalized).
        normalized: divide by ``sqrt(n)`` (unitary), ``1/sqrt(n1)`` and ``1/sqrt(n2)`` per factor.
        dtype: ``torch.complex64`` or ``torch.complex128`` (entries computed in complex128).

    Returns:
        ``(M, perm)``: ``M`` a Monarch of size ``(n, n)``, ``perm`` a ``(n,)`` long tensor
        (``perm[a*n1 + t] = n2*t + a``) on ``device``.
    """
    check_positive_int("n", n)
    check_bool("inverse", inverse)
    check_bool("normalized", normalized)
    if not isinstance(dtype, torch.dtype) or not dtype.is_complex:
        raise TypeError(f"dtype must be torch.complex64 or torch.complex128, got {dtype}")
    if sizes is None:
        sizes = _default_sizes(n)
    if not isinstance(sizes, (tuple, list)) or len(sizes) != 2:
        raise ValueError(f"sizes must be a pair (n1, n2) with n1 * n2 == n={n}, got {sizes!r}")
    n1, n2 = (check_positive_int(f"sizes[{i}]", v) for i, v in enumerate(sizes))
    if n1 * n2 != n:
        raise ValueError(f"sizes must be a pair (n1, n2) with n1 * n2 == n={n}, got {tuple(sizes)}")
    sign = 1.0 if inverse else -1.0
    a = torch.arange(n2).view(n2, 1, 1)  # chunk of blkdiag1 (input digit of size n2)
    b = torch.arange(n1).view(1, n1, 1)  # row of blkdiag1 (output digit of size n1)
    t = torch.arange(n1).view(1, 1, n1)  # column of blkdiag1 (input digit of size n1)
    blkdiag1 = _powers(a * b, n, sign) * _powers(b * t, n1, sign)  # (n2, n1, n1)
    e = torch.arange(n2).view(1, n2, 1)  # row of blkdiag2 (output digit of size n2)
    c = torch.arange(n2).view(1, 1, n2)  # column of blkdiag2 (= the chunk a)
    blkdiag2 = _powers(e * c, n2, sign).expand(n1, n2, n2)  # (n1, n2, n2), the same in every block
    if normalized:
        blkdiag1, blkdiag2 = blkdiag1 / math.sqrt(n1), blkdiag2 / math.sqrt(n2)
    elif inverse:
        blkdiag1, blkdiag2 = blkdiag1 / n1, blkdiag2 / n2
    perm = (n2 * torch.arange(n1).view(1, n1) + torch.arange(n2).view(n2, 1)).reshape(n)  # perm[a*n1 + t]
    kw = {"dtype": dtype, "device": device}
    monarch = Monarch.from_factors(blkdiag1.to(**kw).contiguous(), blkdiag2.to(**kw).contiguous())
    return monarch, perm.to(device)
