"""The butterfly permutation family of Dao et al. (ICML 2019) as index permutations.

A permutation of ``n = 2^m`` entries is built from ``m - 1`` *levels*, one per block size
``2 st`` with ``st = n/2, n/4, ..., 2`` (largest first). At each level, inside every block of
``2 st`` entries, three yes/no choices are applied in this order:

- ``even_odd``: gather the even positions of the block, then the odd ones;
- ``reverse_first``: reverse the first half of the block;
- ``reverse_second``: reverse the second half of the block.

``even_odd`` at every level is the bit reversal (the FFT's input order); ``reverse_second``
at every level is the order the real DCT-II needs (even entries ascending, odd descending at
the top level, recursively). A choice is a tensor ``(..., m - 1, 3)`` of 0/1 (level ``0`` is
the largest block). :class:`RelaxedPermutation` makes the choices continuous (probabilities,
as in the paper) so that they can be trained by gradient, and rounds them to an exact
permutation. Permutations are always applied as gathers ``x[..., perm]``, never as dense
matrices.
"""

from __future__ import annotations

import torch
from torch import nn

from ..checks import check_positive_int


def log2_exact(n: int, name: str = "n") -> int:
    """``m`` with ``n == 2**m``, or a ValueError naming ``name``."""
    check_positive_int(name, n)
    if n & (n - 1):
        raise ValueError(f"{name} must be a power of two, got {n}")
    return n.bit_length() - 1


def level_index(n: int, st: int, choice: tuple[bool, bool, bool], device=None) -> torch.Tensor:
    """Gather index of one level (block size ``2 st``) with its three choices applied."""
    idx = torch.arange(n, device=device)
    v = idx.reshape(-1, 2 * st)
    if choice[0]:
        v = v.reshape(-1, st, 2).transpose(-1, -2)
    v = v.reshape(-1, 2, st)
    if choice[1]:
        v = torch.stack([v[:, 0].flip(-1), v[:, 1]], 1)
    if choice[2]:
        v = torch.stack([v[:, 0], v[:, 1].flip(-1)], 1)
    return v.reshape(n)


def permutation_from_choices(n: int, choices: torch.Tensor) -> torch.Tensor:
    """Index permutation(s) ``perm`` of the family; ``x[..., perm]`` applies it.

    Args:
        n: size, a power of two.
        choices: ``(..., m - 1, 3)`` of 0/1 (bool or numbers), level 0 = largest block.

    Returns:
        ``(..., n)`` long tensor on ``choices``' device.
    """
    m = log2_exact(n)
    choices = torch.as_tensor(choices)
    if choices.shape[-2:] != (max(m - 1, 0), 3):
        raise ValueError(f"choices must have shape (..., {max(m - 1, 0)}, 3) for n={n}, got {tuple(choices.shape)}")
    lead = choices.shape[:-2]
    if m <= 1:
        return torch.arange(n, device=choices.device).expand(*lead, n).clone()
    on = choices > 0.5 if choices.is_floating_point() else choices != 0
    flat = on.reshape(-1, m - 1, 3).cpu()
    out = []
    for row in flat:
        perm = torch.arange(n)
        for level in range(m - 1):
            st = n >> (level + 1)
            perm = perm[level_index(n, st, tuple(bool(c) for c in row[level]))]
        out.append(perm)
    stacked = torch.stack(out) if out else torch.empty(0, n, dtype=torch.long)
    return stacked.reshape(*lead, n).to(choices.device)


def bit_reversal_permutation(n: int) -> torch.Tensor:
    """Indices ``perm`` with ``perm[i]`` = i with its log2(n) bits reversed."""
    m = n.bit_length() - 1
    idx = torch.arange(n)
    rev = torch.zeros_like(idx)
    for bit in range(m):
        rev |= ((idx >> bit) & 1) << (m - 1 - bit)
    return rev


def is_permutation(perm: torch.Tensor) -> torch.Tensor:
    """``(...,)`` bool: whether each last-dim row of an integer tensor is a permutation of 0..n-1."""
    if perm.dtype.is_floating_point or perm.dtype.is_complex or perm.dtype == torch.bool:
        return torch.zeros(perm.shape[:-1], dtype=torch.bool, device=perm.device)
    n = perm.shape[-1]
    ref = torch.arange(n, device=perm.device)
    return (perm.sort(-1).values == ref).all(-1)


def apply_permutation(x: torch.Tensor, perm: torch.Tensor, nbatch: int) -> torch.Tensor:
    """``x[..., perm]`` where ``perm`` is ``(n,)`` or ``(*batch, n)`` and ``x`` is ``(*batch, ..., n)``."""
    if perm.dim() == 1:
        return x.index_select(-1, perm)  # much faster on CPU than x[..., perm]
    lead = x.shape[nbatch:-1]
    p = perm.reshape(*perm.shape[:-1], *([1] * len(lead)), perm.shape[-1])
    return torch.gather(x, -1, p.expand(*x.shape[:-1], perm.shape[-1]))


class RelaxedPermutation(nn.Module):
    """A learnable member of the family: per level, three probabilities (sigmoid of ``logits``).

    ``forward(x)`` applies the relaxed permutation, level by level, as the convex combination
    ``(1 - p) x + p x[..., level_index]`` of each choice (gathers only, no dense matrix), which is
    a doubly stochastic map whose vertices are the family's permutations. :meth:`hard` rounds
    every probability to 0/1 and returns the exact index permutation.

    ``logits`` has shape ``(*batch_shape, m - 1, 3)``.
    """

    def __init__(self, n: int, batch_shape: tuple[int, ...] = (), device=None, dtype=None, init_scale: float = 0.1):
        super().__init__()
        m = log2_exact(n)
        self.n = n
        self.batch_shape = torch.Size(batch_shape)
        logits = torch.randn(*batch_shape, max(m - 1, 0), 3, device=device, dtype=dtype) * init_scale
        self.logits = nn.Parameter(logits)
        for level in range(m - 1):
            st = n >> (level + 1)
            for c in range(3):
                choice = tuple(i == c for i in range(3))
                self.register_buffer(f"_idx_{level}_{c}", level_index(n, st, choice, device), persistent=False)

    @classmethod
    def from_choices(cls, choices: torch.Tensor, n: int, sharpness: float = 4.0, dtype=None) -> RelaxedPermutation:
        """Start at a given choice: logits ``+-sharpness`` (probabilities ~0.98 / 0.02)."""
        choices = torch.as_tensor(choices)
        rp = cls(n, tuple(choices.shape[:-2]), device=choices.device, dtype=dtype)
        with torch.no_grad():
            rp.logits.copy_((choices.round().to(rp.logits.dtype) * 2 - 1) * sharpness)
        return rp

    def probabilities(self) -> torch.Tensor:
        return torch.sigmoid(self.logits)

    def choices(self) -> torch.Tensor:
        """The rounded choices ``(*batch_shape, m - 1, 3)`` (0/1, long)."""
        return (self.logits.detach() > 0).long()

    def hard(self) -> torch.Tensor:
        """The exact index permutation(s) ``(*batch_shape, n)`` nearest to the relaxation."""
        return permutation_from_choices(self.n, self.choices())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` ``(*batch_shape, ..., n)`` (or ``(..., n)`` when unbatched) -> same shape."""
        p = self.probabilities().to(x.real.dtype if x.is_complex() else x.dtype)
        nb = len(self.batch_shape)
        extra = x.dim() - nb - 1
        for level in range(p.shape[-2]):
            for c in range(3):
                pc = p[..., level, c].reshape(*self.batch_shape, *([1] * (extra + 1)))
                moved = x.index_select(-1, getattr(self, f"_idx_{level}_{c}"))
                x = x + pc * (moved - x)
        return x

    def extra_repr(self) -> str:
        return f"n={self.n}, batch_shape={tuple(self.batch_shape)}"
