"""The MoRe reference code's Monarch multiply, as an autograd Function with a hand-written backward.

Written from the published algorithm (Dao et al. 2022; the ``blockdiag_butterfly_multiply`` of the
MoRe reference, Tan et al. 2024): two batched matmuls with a reshape/transpose between them; the
forward keeps ``x``, both factors and the middle activations for backward, and the backward runs
the transposed bmms. Not copied: this is the baseline ``bench_layer.py`` times MoRe's fused layer
against, so that "faster than the reference" means faster than what its users run today.
"""

from __future__ import annotations

import torch
from torch import nn


class ReferenceMonarchMultiply(torch.autograd.Function):
    """``y = x @ M.T`` for factors ``w1`` (k, q, p), ``w2`` (l, s, r), ``l*r == k*q``, ``x`` (n, k*p)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
        k, q, p = w1.shape
        l, s, r = w2.shape
        n = x.shape[0]
        xb = x.reshape(n, k, p).transpose(0, 1)  # (k, n, p)
        mid = torch.bmm(xb, w1.transpose(-1, -2))  # (k, n, q)
        mid2 = mid.transpose(0, 1).reshape(n, r, l).permute(2, 0, 1).contiguous()  # (l, n, r): j = c*l + d
        out = torch.bmm(mid2, w2.transpose(-1, -2))  # (l, n, s)
        ctx.save_for_backward(x, w1, w2, mid2)
        return out.permute(1, 2, 0).reshape(n, l * s)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, w1, w2, mid2 = ctx.saved_tensors
        k, q, p = w1.shape
        l, s, r = w2.shape
        n = x.shape[0]
        g = grad.reshape(n, s, l).permute(2, 0, 1)  # (l, n, s)
        d_w2 = torch.bmm(g.transpose(-1, -2), mid2)  # (l, s, r)
        d_mid2 = torch.bmm(g, w2)  # (l, n, r)
        d_mid = d_mid2.permute(1, 2, 0).reshape(n, k, q).transpose(0, 1)  # (k, n, q)
        xb = x.reshape(n, k, p).transpose(0, 1)  # (k, n, p)
        d_w1 = torch.bmm(d_mid.transpose(-1, -2), xb)  # (k, q, p)
        d_x = torch.bmm(d_mid, w1).transpose(0, 1).reshape(n, k * p)  # (n, k*p)
        return d_x, d_w1, d_w2


class ReferenceMoReLayer(nn.Module):
    """What the reference's MoRe layer computes: ``base(x) + monarch(x)``, two separate nodes."""

    def __init__(self, base: nn.Linear, nblocks: int, rank: int):
        super().__init__()
        self.base = base
        k, p = nblocks, base.in_features // nblocks
        l, s = nblocks, base.out_features // nblocks
        self.blkdiag1 = nn.Parameter(
            torch.randn(k, rank, p, device=base.weight.device, dtype=base.weight.dtype) / p**0.5
        )
        self.blkdiag2 = nn.Parameter(torch.randn(l, s, rank, device=base.weight.device, dtype=base.weight.dtype) * 0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + ReferenceMonarchMultiply.apply(x, self.blkdiag1, self.blkdiag2)
