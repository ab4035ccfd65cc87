"""The Monarch multiply ``y = x @ M.T`` with ``M`` given by two block-diagonal factors.

Convention (docs/monarch-math.md, the one of the reference ``blockdiag_butterfly_multiply``):
split ``x`` into ``k`` chunks of ``p``, apply ``blkdiag1`` per chunk, re-read the middle
vector of length ``k*q`` as ``(r, l)`` (block ``d`` takes the strided slice ``d, l+d, ...``),
apply ``blkdiag2`` per block and interleave the outputs (output ``e*l + d`` from block ``d``).
Never a dense permutation matrix: the permutations are reshapes and transposes.
"""

from __future__ import annotations

import torch


def monarch_multiply(
    x: torch.Tensor,  # (..., k*p)
    blkdiag1: torch.Tensor,  # (*batch, k, q, p)
    blkdiag2: torch.Tensor,  # (*batch, l, s, r)
) -> torch.Tensor:  # (..., l*s)
    """Multiply ``x`` by the Monarch matrix of the two factors (no padding, no checks).

    With factors carrying batch dims ``(*batch,)``, ``x`` must be ``(*batch, n, k*p)``.
    """
    k, q, p = blkdiag1.shape[-3:]
    l, s, r = blkdiag2.shape[-3:]
    nbatch = blkdiag1.dim() - 3
    if nbatch:  # broadcast factors over the token dim of x: (*batch, 1, k, q, p)
        blkdiag1 = blkdiag1.unsqueeze(-4)
        blkdiag2 = blkdiag2.unsqueeze(-4)
    lead = x.shape[:-1]
    xb = x.reshape(*lead, k, p)  # (..., k, p)
    h = torch.einsum("...kp,...kqp->...kq", xb, blkdiag1)  # (..., k, q)
    h = h.reshape(*lead, r, l).transpose(-1, -2)  # (..., l, r): block d takes h[c*l + d]
    y = torch.einsum("...lr,...lsr->...ls", h, blkdiag2)  # (..., l, s)
    return y.transpose(-1, -2).reshape(*lead, s * l)  # output e*l + d
