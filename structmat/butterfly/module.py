"""``Butterfly``: products of log2(n) sparse factors of 2x2 "twiddle" mixes, with permutations."""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..base import StructuredLinear
from ..checks import check_batch_shape, check_bool, check_float_dtype, check_positive_int
from .permutation import RelaxedPermutation, apply_permutation, bit_reversal_permutation, is_permutation

ButterflyInit = Literal["ortho", "randn", "identity"]
PermSpec = torch.Tensor | Literal["learn"] | None

__all__ = ["Butterfly", "bit_reversal_permutation", "dft_butterfly", "hadamard_butterfly", "next_power_of_two"]


def next_power_of_two(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


class Butterfly(StructuredLinear):
    """A butterfly matrix of size ``n = 2^m`` with optional permutations; ``forward(x) = x @ M.T``.

    ``M = P_out K_{b-1} ... K_1 K_0 P_in`` where each *block* ``K_k`` is a butterfly
    ``B_{m-1} ... B_1 B_0`` (increasing stride) or ``B_0 B_1 ... B_{m-1}`` (decreasing): factor
    ``B_i`` mixes entries ``2^i`` apart with its own 2x2 twiddle per pair. Block 0 (applied first)
    has the stride order ``increasing_stride``; the blocks alternate, so ``nblocks=2,
    increasing_stride=False`` is the kaleidoscope product ``B B*`` of Dao et al. (ICLR 2020).

    Parameter ``twiddle`` has shape ``(*batch_shape, nblocks * m, n // 2, 2, 2)``; entry
    ``twiddle[k*m + i, b*st + t]`` (``st = 2^i``) of block ``k`` maps the pair ``(x[2*st*b + t],
    x[2*st*b + st + t])`` to the same two positions: ``y_o = sum_c twiddle[., ., o, c] x_c``.

    Permutations are index gathers (never dense matrices): ``P_in x = x[..., in_perm]`` and
    ``P_out y = y[..., out_perm]``. Each of ``in_perm`` / ``out_perm`` is ``None`` (identity), an
    index tensor ``(n,)`` or ``(*batch_shape, n)``, or ``"learn"``: a
    :class:`~structmat.butterfly.permutation.RelaxedPermutation` (the family of Dao et al. 2019,
    relaxed) trained with the twiddles and rounded to an exact permutation by
    :meth:`round_permutations`. ``bit_reversal=True`` is ``in_perm = bit reversal``.

    Sizes that are not powers of two: ``n`` is the next power of two of
    ``max(in_features, out_features)``; inputs are zero-padded to ``n`` and outputs cropped
    to ``out_features``.

    Args:
        in_features: input size; out_features: output size (default ``in_features``).
        complex: complex twiddles (then ``M`` and the outputs are complex).
        real_output: with ``complex=True``: the map is ``Re(M)`` (for real inputs the real part of
            the complex product), so that a real matrix with complex factors (e.g. a real circulant,
            ``F^-1 diag(F c) F``) acts as a real layer. ``to_dense()`` is then real.
        nblocks: number of butterfly blocks (alternating stride order).
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
        nblocks: int = 1,
        in_perm: PermSpec = None,
        out_perm: PermSpec = None,
        real_output: bool = False,
        init: ButterflyInit = "ortho",
        batch_shape: tuple[int, ...] = (),
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        check_positive_int("in_features", in_features)
        out_features = in_features if out_features is None else out_features
        check_positive_int("out_features", out_features)
        check_positive_int("nblocks", nblocks)
        batch_shape = check_batch_shape("batch_shape", batch_shape)
        for flag, value in (
            ("complex", complex),
            ("increasing_stride", increasing_stride),
            ("bit_reversal", bit_reversal),
            ("real_output", real_output),
        ):
            check_bool(flag, value)
        if real_output and not complex:
            raise ValueError("real_output=True needs complex=True (a real butterfly is real already)")
        n = next_power_of_two(max(in_features, out_features, 2))
        m = n.bit_length() - 1
        real_dtype = dtype if dtype is not None else torch.get_default_dtype()
        check_float_dtype("dtype", real_dtype, allow_complex=complex)
        if real_dtype.is_complex:
            real_dtype = real_dtype.to_real()
        if bit_reversal:
            if in_perm is not None:
                raise ValueError("give either bit_reversal=True or in_perm, not both")
            in_perm = bit_reversal_permutation(n)
        twiddle = _init_twiddle((*batch_shape, nblocks * m, n // 2), init, complex, real_dtype, device)
        super().__init__(in_features, out_features, batch_shape)
        self.n = n
        self.nblocks = nblocks
        self.increasing_stride = increasing_stride
        self.real_output = real_output
        self.twiddle = nn.Parameter(twiddle)
        self._set_perm("in", in_perm, real_dtype, device)
        self._set_perm("out", out_perm, real_dtype, device)

    # -- permutations --------------------------------------------------------------------
    def _set_perm(self, side: str, spec: PermSpec, dtype: torch.dtype, device) -> None:
        name = f"{side}_perm"
        if isinstance(spec, str):
            if spec != "learn":
                raise ValueError(f"{name} must be None, an index tensor or 'learn', got {spec!r}")
            self.register_buffer(name, None)
            self.add_module(f"{side}_relaxed", RelaxedPermutation(self.n, tuple(self.batch_shape), device, dtype))
            return
        setattr(self, f"{side}_relaxed", None)
        if spec is None:
            self.register_buffer(name, None)
            return
        perm = torch.as_tensor(spec, device=device)
        ok_shapes = ((self.n,), (*self.batch_shape, self.n))
        if tuple(perm.shape) not in ok_shapes:
            raise ValueError(
                f"{name} must have shape (n,) or (*batch_shape, n) with n={self.n}, got {tuple(perm.shape)}"
            )
        if not bool(is_permutation(perm).all()):
            raise ValueError(f"{name} must hold permutations of 0..{self.n - 1} (integer indices)")
        self.register_buffer(name, perm.long())

    @property
    def bit_reversal(self) -> bool:
        """Whether ``in_perm`` is the bit reversal (kept for the original constructor argument)."""
        return (
            self.in_perm is not None
            and self.in_perm.dim() == 1
            and torch.equal(self.in_perm.cpu(), bit_reversal_permutation(self.n))
        )

    @property
    def learns_permutations(self) -> bool:
        return self.in_relaxed is not None or self.out_relaxed is not None

    def round_permutations(self) -> Butterfly:
        """Replace relaxed (learned) permutations by their rounding, exact index permutations.

        After this the module is a product of butterflies and gathers only; the logits are gone
        from the parameters. Returns ``self``.
        """
        for side in ("in", "out"):
            relaxed = getattr(self, f"{side}_relaxed")
            if relaxed is not None:
                perm = relaxed.hard()
                delattr(self, f"{side}_relaxed")
                setattr(self, f"{side}_relaxed", None)
                self.register_buffer(f"{side}_perm", perm)
        return self

    # -- structure ------------------------------------------------------------------------
    @property
    def is_complex(self) -> bool:
        return self.twiddle.is_complex()

    @property
    def nfactors(self) -> int:
        return self.twiddle.shape[-4]

    @property
    def log_n(self) -> int:
        return self.n.bit_length() - 1

    @property
    def max_rank(self) -> int:
        return min(self.in_features, self.out_features)

    @property
    def dtype(self) -> torch.dtype:
        return self.twiddle.real.dtype if self.real_output else self.twiddle.dtype

    @property
    def _reference_param(self) -> torch.Tensor:
        return self.twiddle

    def block_orders(self) -> list[list[int]]:
        """Twiddle level indices in the order they are applied, one list per block."""
        m = self.log_n
        orders = []
        for k in range(self.nblocks):
            increasing = self.increasing_stride if k % 2 == 0 else not self.increasing_stride
            strides = range(m) if increasing else reversed(range(m))
            orders.append([k * m + i for i in strides])
        return orders

    def _matmul(self, x: torch.Tensor) -> torch.Tensor:
        if self.real_output and x.is_complex():  # Re(M) is real-linear: act on both parts
            return torch.complex(self._core(x.real).real, self._core(x.imag).real)
        y = self._core(x)
        return y.real if self.real_output else y

    def _core(self, x: torch.Tensor) -> torch.Tensor:
        n, m = self.n, self.log_n
        nb = len(self.batch_shape)
        if self.is_complex and not x.is_complex():
            x = x.to(self.twiddle.dtype)
        if x.shape[-1] != n:
            x = F.pad(x, (0, n - x.shape[-1]))
        if self.in_relaxed is not None:
            x = self.in_relaxed(x)
        elif self.in_perm is not None:
            x = apply_permutation(x, self.in_perm, nb)
        twiddle = self.twiddle
        if self.batch_shape:  # broadcast over the token dim of x
            twiddle = twiddle.unsqueeze(-5)
        lead = x.shape[:-1]
        for order in self.block_orders():
            for level in order:
                st = 1 << (level % m)
                tw = twiddle[..., level, :, :, :].reshape(*twiddle.shape[:-4], n // (2 * st), st, 2, 2)
                xb = x.reshape(*lead, n // (2 * st), 2, st)  # (..., blocks, pair member c, t)
                x = torch.einsum("...bct,...btoc->...bot", xb, tw).reshape(*lead, n)
        if self.out_relaxed is not None:
            x = self.out_relaxed(x)
        elif self.out_perm is not None:
            x = apply_permutation(x, self.out_perm, nb)
        return x[..., : self.out_features]

    def _structure_repr(self) -> str:
        def perm_text(side: str) -> str:
            if getattr(self, f"{side}_relaxed") is not None:
                return "learned (relaxed)"
            perm = getattr(self, f"{side}_perm")
            if perm is None:
                return "identity"
            if side == "in" and self.bit_reversal:
                return "bit reversal"
            return "index"

        text = (
            f"n={self.n}, nblocks={self.nblocks}, nfactors={self.nfactors}, complex={self.is_complex}, "
            f"increasing_stride={self.increasing_stride}, in_perm={perm_text('in')}, out_perm={perm_text('out')}"
        )
        return text + (", real_output=True" if self.real_output else "")


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
