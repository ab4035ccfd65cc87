"""Closed-form butterfly factorization of a dense matrix, level by level from the outside in.

Two structures (``n = 2^m``, ``x`` enters on the right, ``P_out``/``P_in`` permutations of the
family in :mod:`.permutation`, chosen level by level):

- ``nblocks=1``: ``M = P_out B P_in`` with ``B`` a decreasing-stride butterfly (strides
  ``n/2, ..., 1``, the largest applied first). The first factor pairs ``(j, n/2 + j)`` and every
  later one acts on the two halves separately, so ``M = (G_0 (+) G_1) L``: for every ``j`` and
  half ``t`` the ``n/2 x 2`` block ``M[half t, (j, n/2 + j)]`` has rank one; its top singular
  pair gives column ``j`` of ``G_t`` and row ``t`` of the twiddle of pair ``j`` (the hierarchical
  factorization of Le, Zheng, Riccietti and Gribonval, 2022, one level per step).
- ``nblocks=2``: ``M = P_out B_inc B_dec P_in`` (the kaleidoscope ``B B*`` of Dao et al., 2020):
  now the first *and* the last factor pair ``(j, n/2 + j)``, ``M = E (G_0 (+) G_1) F``, and the
  ``2 x 2`` block ``Z_ij = M[(i, n/2+i), (j, n/2+j)] = E_i diag(G_0[i,j], G_1[i,j]) F_j``. Then
  ``(sum_j a_j Z_ij adj(Z_lj)) (sum_k b_k Z_lk adj(Z_ik)) = c E_i D E_i^-1`` (``adj``: adjugate,
  ``D`` diagonal, ``a, b`` random weights), so ``E_i`` are the eigenvectors of a ``2 x 2``
  matrix; ``F_j`` likewise from ``M^T``; ``G = E^-1 Z F^-1``.

Both recurse into ``G_0, G_1`` (every block of a level in one batch). The permutation level
that decides which entries are paired at a depth only changes that depth's pairs (the deeper
levels act alike on both halves), so the search scores the 64 (input, output) choices of a
level by that level's residual and keeps the entries that stay exact (with ``shared=True``
only the top level's choice repeated at every depth). A matrix of the structure is recovered to rounding error in
``O(n^2 log n)`` per candidate; any other matrix gives a large error: this is an exact method,
not a best approximation (the fit measures the error of what it returns and refines it).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch

from .permutation import level_index, permutation_from_choices

_CHOICES = torch.tensor(list(itertools.product((0, 1), repeat=3)))  # (8, 3)


def _mul2(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """Batched 2x2 products ``A @ B`` without bmm (elementwise; fast for many tiny matrices)."""
    return A[..., :, 0:1] * B[..., 0:1, :] + A[..., :, 1:2] * B[..., 1:2, :]


def _adj(Z: torch.Tensor) -> torch.Tensor:
    a, b, c, d = Z[..., 0, 0], Z[..., 0, 1], Z[..., 1, 0], Z[..., 1, 1]
    return torch.stack([torch.stack([d, -b], -1), torch.stack([-c, a], -1)], -2)


def _inv2(Z: torch.Tensor) -> torch.Tensor:
    det = Z[..., 0, 0] * Z[..., 1, 1] - Z[..., 0, 1] * Z[..., 1, 0]
    tiny = torch.finfo(Z.real.dtype).tiny ** 0.5
    det = torch.where(det.abs() < tiny, torch.full_like(det, tiny), det)
    return _adj(Z) / det[..., None, None]


def _phase_normalize(V: torch.Tensor) -> torch.Tensor:
    """Scale each column so that its largest entry is real positive (real when possible)."""
    idx = V.abs().argmax(-2, keepdim=True)
    top = torch.gather(V, -2, idx)
    mag = top.abs()
    phase = torch.where(mag > 0, top / mag.clamp_min(torch.finfo(mag.dtype).tiny), torch.ones_like(top))
    return V / phase


def _eigvecs2(S: torch.Tensor) -> torch.Tensor:
    """Eigenvectors (columns, unit norm) of complex 2x2 matrices ``(..., 2, 2)``, closed form."""
    a, b, c, d = S[..., 0, 0], S[..., 0, 1], S[..., 1, 0], S[..., 1, 1]
    half = (a - d) / 2
    root = torch.sqrt(half * half + b * c)
    mean = (a + d) / 2
    cols = []
    for k, lam in enumerate((mean + root, mean - root)):
        v1 = torch.stack([b, lam - a], -1)  # from row 0: (a - lam) x + b y = 0
        v2 = torch.stack([lam - d, c], -1)  # from row 1: c x + (d - lam) y = 0
        pick = v1.abs().pow(2).sum(-1, keepdim=True) >= v2.abs().pow(2).sum(-1, keepdim=True)
        v = torch.where(pick, v1, v2)
        norm = v.abs().pow(2).sum(-1, keepdim=True).sqrt()
        unit = torch.zeros_like(v)
        unit[..., k] = 1.0
        cols.append(torch.where(norm > 0, v / norm.clamp_min(torch.finfo(norm.dtype).tiny), unit))
    return _phase_normalize(torch.stack(cols, -1))


def _left_factors(Z: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """``Z`` (B, h, h, 2, 2) with ``Z_ij = E_i Lambda_ij F_j`` -> ``E`` (B, h, 2, 2), columns unit norm."""
    B, h = Z.shape[:2]
    dev, dt = Z.device, Z.dtype
    a = torch.randn(h, generator=gen, dtype=torch.float64).to(dev, dt)
    b = torch.randn(h, generator=gen, dtype=torch.float64).to(dev, dt)
    energy = Z.abs().pow(2).sum((2, 3, 4))  # (B, h)
    refs = energy.topk(min(2, h), -1).indices  # two reference row pairs: S is a scalar for i = l
    adjZ = _adj(Z)
    S = torch.zeros(B, h, 2, 2, dtype=dt, device=dev)
    rows = torch.arange(B, device=dev)
    for r in range(refs.shape[-1]):
        Zl = Z[rows, refs[:, r]]  # (B, h(j), 2, 2)
        W = a[:, None, None] * _adj(Zl)  # (B, j, 2, 2)
        U = Z.permute(0, 1, 3, 2, 4).reshape(B, 2 * h, 2 * h) @ W.reshape(B, 2 * h, 2)  # (B, (i a), c)
        Y = b[:, None, None] * Zl  # (B, k, 2, 2)
        V = Y.permute(0, 2, 1, 3).reshape(B, 2, 2 * h) @ adjZ.permute(0, 2, 3, 1, 4).reshape(B, 2 * h, 2 * h)
        Sr = _mul2(U.reshape(B, h, 2, 2), V.reshape(B, 2, h, 2).permute(0, 2, 1, 3))
        Sr = Sr - (0.5 * (Sr[..., 0, 0] + Sr[..., 1, 1]))[..., None, None] * torch.eye(2, dtype=dt, device=dev)
        scale = Sr.abs().pow(2).sum((-3, -2, -1), keepdim=True).sqrt()
        S = S + (1.0 + 0.618 * r) * Sr / scale.clamp_min(torch.finfo(scale.dtype).tiny)
    return _eigvecs2(torch.nan_to_num(S, nan=0.0, posinf=0.0, neginf=0.0))


def _peel_two_sided(M: torch.Tensor, gen: torch.Generator):
    """``M`` (B, s, s) -> twiddles (F, E) (B, s/2, 2, 2), G (B, 2, s/2, s/2), residual (B,)."""
    B, s, _ = M.shape
    h = s // 2
    Z = M.reshape(B, 2, h, 2, h).permute(0, 2, 4, 1, 3)  # (B, i, j, row half, col half)
    E = _left_factors(Z, gen)
    F = _left_factors(Z.transpose(1, 2).transpose(-1, -2), gen).transpose(-1, -2)
    Lam = _mul2(_mul2(_inv2(E)[:, :, None], Z), _inv2(F)[:, None])
    swap = torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=M.dtype, device=M.device)
    # the eigenvector order is arbitrary: order each F_j by the strongest row pair, then each E_i by all j
    anti_wins = Lam[..., 0, 1].abs().pow(2) + Lam[..., 1, 0].abs().pow(2) > Lam[..., 0, 0].abs().pow(2) + Lam[
        ..., 1, 1
    ].abs().pow(2)
    i0 = Z.abs().pow(2).sum((2, 3, 4)).argmax(-1)
    swap_f = anti_wins[torch.arange(B, device=M.device), i0]  # (B, j)
    F = torch.where(swap_f[..., None, None], _mul2(swap, F), F)
    Lam = torch.where(swap_f[:, None, :, None, None], _mul2(Lam, swap), Lam)
    diag = Lam[..., 0, 0].abs().pow(2) + Lam[..., 1, 1].abs().pow(2)
    anti = Lam[..., 0, 1].abs().pow(2) + Lam[..., 1, 0].abs().pow(2)
    swap_e = anti.sum(-1) > diag.sum(-1)  # (B, i)
    E = torch.where(swap_e[..., None, None], _mul2(E, swap), E)
    Lam = torch.where(swap_e[:, :, None, None, None], _mul2(swap, Lam), Lam)
    G = torch.stack([Lam[..., 0, 0], Lam[..., 1, 1]], 1)  # (B, 2, h, h)
    Zhat = _mul2(_mul2(E[:, :, None], torch.diag_embed(torch.stack([G[:, 0], G[:, 1]], -1))), F[:, None])
    residual = (Z - Zhat).abs().pow(2).sum((1, 2, 3, 4))
    return (F, E), G, torch.nan_to_num(residual, nan=float("inf"))


def _peel_one_sided(M: torch.Tensor):
    """``M`` (B, s, s) -> twiddles (F,) (B, s/2, 2, 2), G (B, 2, s/2, s/2), residual (B,)."""
    B, s, _ = M.shape
    h = s // 2
    X = M.reshape(B, 2, h, 2, h).permute(0, 1, 4, 2, 3)  # (B, t, j, i, col half): rank one in (i, col half)
    gram = X.mH @ X  # (B, t, j, 2, 2) Hermitian
    evals, evecs = torch.linalg.eigh(gram)  # ascending
    null = _phase_normalize(evecs[..., :, 1:2])  # (B, t, j, 2, 1): the top right singular vector
    G = (X @ null).squeeze(-1).permute(0, 1, 3, 2)  # (B, t, i, j)
    F = null.squeeze(-1).conj().permute(0, 2, 1, 3)  # (B, j, t, col half)
    residual = (X - (X @ null) @ null.mH).abs().pow(2).sum((1, 2, 3, 4))
    return (F,), G, residual


def _peel(M: torch.Tensor, nblocks: int, gen: torch.Generator):
    if M.shape[-1] == 2:  # the last level: the 2x2 block is the twiddle itself
        B = M.shape[0]
        ones = torch.ones(B, 2, 1, 1, dtype=M.dtype, device=M.device)
        zero = torch.zeros(B, dtype=M.real.dtype, device=M.device)
        tw = M.reshape(B, 1, 2, 2)
        if nblocks == 1:
            return (tw,), ones, zero
        return (torch.eye(2, dtype=M.dtype, device=M.device).expand(B, 1, 2, 2).clone(), tw), ones, zero
    return _peel_one_sided(M) if nblocks == 1 else _peel_two_sided(M, gen)


@dataclass
class Candidate:
    """One closed-form factorization: ``K = T[out_index][:, in_index]`` factored as the structure."""

    residual: torch.Tensor  # (E,) summed squared residuals of the peeled levels
    in_choices: torch.Tensor  # (E, m - 1, 3)
    out_choices: torch.Tensor  # (E, m - 1, 3)
    twiddle: torch.Tensor  # (E, nblocks * m, n/2, 2, 2), complex


def search(
    T: torch.Tensor,
    nblocks: int,
    shared: bool = True,
    beam: int = 8,
    exact_tol: float = 1e-26,
    seed: int = 0,
    keep: int = 64,
) -> Candidate | None:
    """Closed-form factorizations of ``T`` (n, n) over the permutation family, best first.

    ``T`` is used in complex128. Depth 0 scores all 64 (input, output) choices of the top level.
    With ``shared=True`` every deeper level repeats its entry's top choice (the 64 permutation
    pairs of Dao et al.'s shared logits) and up to ``keep`` exact entries are kept; else every
    entry tries all 64 choices at every depth and the ``beam`` entries with the smallest
    residual are kept (a choice can be exact at its depth and fail deeper, so several are kept:
    trying the previous depth's choice first missed 2 of 10 random members at n=128, a beam of
    4 missed 1 of 12 at n=32, a beam of 8 none of these). Entries that stop being exact
    (accumulated squared residual above ``exact_tol * ||T||^2``) are dropped. As soon as no
    entry is exact the search stops and returns ``None``: ``T`` is not of this structure with a
    permutation of the family, or the beam lost it (ties between exact choices). With a large
    ``exact_tol`` (above 1e-8: a near miss) the screening keeps the 16 best choices of a level
    instead of all that pass. Otherwise returns the entries sorted by residual (to be
    checked by a product).
    """
    if nblocks not in (1, 2):
        raise ValueError(f"nblocks must be 1 or 2 for the closed form, got {nblocks}")
    gen = torch.Generator().manual_seed(seed)
    T = T.to(torch.complex128)
    n = T.shape[-1]
    m = n.bit_length() - 1
    dev = T.device
    total = T.abs().pow(2).sum()
    G = T.reshape(1, 1, n, n)  # (E, blocks, s, s)
    residual = torch.zeros(1, dtype=torch.float64, device=dev)
    in_ch = torch.zeros(1, 0, 3, dtype=torch.long, device=dev)
    out_ch = torch.zeros(1, 0, 3, dtype=torch.long, device=dev)
    levels: list[list[torch.Tensor]] = []  # per depth, per side: (E, blocks, s/2, 2, 2)
    choices = _CHOICES.to(dev)
    for depth in range(m):
        E, nbk, s, _ = G.shape
        if s > 2:
            idx = torch.stack([level_index(s, s // 2, tuple(bool(v) for v in c), dev) for c in _CHOICES])  # (8, s)
            if depth == 0:
                combos = torch.cartesian_prod(torch.arange(8, device=dev), torch.arange(8, device=dev))  # (64, 2)
                parent = torch.arange(E, device=dev).repeat_interleave(64)
                combo = combos.repeat(E, 1)
            elif shared:  # every deeper level repeats the entry's top choice
                prev = (
                    (in_ch[:, -1] * torch.tensor([4, 2, 1], device=dev)).sum(-1),
                    (out_ch[:, -1] * torch.tensor([4, 2, 1], device=dev)).sum(-1),
                )
                parent = torch.arange(E, device=dev)
                combo = torch.stack(prev, -1)
            else:  # every choice for every entry: a choice exact at this depth may fail deeper
                combos = torch.cartesian_prod(torch.arange(8, device=dev), torch.arange(8, device=dev))
                parent = torch.arange(E, device=dev).repeat_interleave(64)
                combo = combos.repeat(E, 1)
        else:
            parent = torch.arange(E, device=dev)
            combo = None
        res_new, G_new, tw_new, kept = _score(G, parent, combo, idx if s > 2 else None, nblocks, gen, exact_tol)
        parent = parent[kept]
        combo = combo[kept] if combo is not None else None
        acc = residual[parent] + res_new
        good = acc <= exact_tol * total  # entries that stop being exact are dropped
        parent, acc, G_new = parent[good], acc[good], G_new[good]
        tw_new = [t[good] for t in tw_new]
        combo = combo[good] if combo is not None else None
        if not len(parent):
            return None
        order = torch.argsort(acc)[: (keep if shared else beam)]
        parent, acc, G_new = parent[order], acc[order], G_new[order]
        tw_new = [t[order] for t in tw_new]
        levels = [[t[parent] for t in lv] for lv in levels] + [tw_new]
        if combo is not None:
            combo = combo[order]
            in_ch = torch.cat([in_ch[parent], choices[combo[:, 0]].unsqueeze(1)], 1)
            out_ch = torch.cat([out_ch[parent], choices[combo[:, 1]].unsqueeze(1)], 1)
        residual = acc
        G = G_new
    # assemble: depth d has stride n >> (d + 1) (level index m - 1 - d); a module applies the
    # deeper levels' choices before this level, so its pair p of block b is the search's pair
    # sigma_d(p), sigma_d the family permutation of size s/2 made of the deeper choices.
    E = residual.shape[0]
    sides = []
    for side, ch in zip(range(nblocks), (in_ch, out_ch), strict=False):
        per_level = []
        for d in range(m):
            tw = levels[d][side]  # (E, blocks, h, 2, 2)
            h = tw.shape[2]
            if h > 1:
                sigma = permutation_from_choices(h, ch[:, d + 1 :])  # (E, h)
                tw = torch.gather(tw, 2, sigma[:, None, :, None, None].expand_as(tw))
            per_level.append(tw.reshape(E, n // 2, 2, 2))
        sides.append(torch.stack(per_level[::-1], 1))  # (E, m, n/2, 2, 2), level index = log2(stride)
    return Candidate(residual / total.clamp_min(1e-300), in_ch, out_ch, torch.cat(sides, 1))


def _score(G, parent, combo, idx, nblocks, gen, keep_tol=None, sample: int = 12):
    """Apply each (parent, combo) level choice to the parents' blocks and peel them.

    With ``keep_tol``, the combos are first screened on ``sample`` random pairs of rows and
    columns per block (an exact factorization is exact on any subset of pairs); only those
    whose screened residual, relative to the squared norm of the sampled entries, passes the
    bar (exact mode: within ``max(1e6 * keep_tol, 1e-14)``, or the best one if none; near-miss
    mode: the 16 best) are peeled in full. Returns the kept indices into ``parent`` too.
    """
    kept = torch.arange(len(parent), device=G.device)
    s = G.shape[-1]
    if keep_tol is not None and combo is not None and s // 2 > sample:
        h = s // 2
        pick = torch.randperm(h, generator=gen)[:sample].to(G.device)
        both = torch.cat([pick, pick + h])
        cin, cout = idx[combo[:, 0]][:, both], idx[combo[:, 1]][:, both]  # (C, 2k): the sampled pairs
        Gp = G[parent]
        Gs = torch.gather(Gp, -1, cin[:, None, None, :].expand(*Gp.shape[:-1], 2 * sample))
        Gs = torch.gather(Gs, -2, cout[:, None, :, None].expand(*Gs.shape[:-2], 2 * sample, 2 * sample))
        C, nbk = Gs.shape[:2]
        if nblocks == 1:  # rows are not paired on this side: a sample of rows per half is enough too
            _, _, r = _peel_one_sided(Gs.reshape(C * nbk, 2 * sample, 2 * sample))
        else:
            _, _, r = _peel_two_sided(Gs.reshape(C * nbk, 2 * sample, 2 * sample), gen)
        r = r.reshape(C, nbk).sum(-1)
        scale = Gs.abs().pow(2).sum((1, 2, 3)).clamp_min(torch.finfo(r.dtype).tiny)
        rel = r / scale
        if keep_tol < 1e-8:  # exact mode: a looser bar than the full peel's, this only prunes
            ok = rel <= max(1e6 * keep_tol, 1e-14)
            kept = torch.nonzero(ok).flatten() if bool(ok.any()) else rel.argmin().reshape(1)
        else:  # near-miss mode: the few best choices only
            kept = torch.argsort(rel)[:16]
        parent, combo = parent[kept], combo[kept]
    Gp = G[parent]  # (C, blocks, s, s)
    if combo is not None:
        cin, cout = idx[combo[:, 0]], idx[combo[:, 1]]  # (C, s)
        Gp = torch.gather(Gp, -1, cin[:, None, None, :].expand_as(Gp))
        Gp = torch.gather(Gp, -2, cout[:, None, :, None].expand_as(Gp))
    C, nbk, s, _ = Gp.shape
    tws, Gn, res = _peel(Gp.reshape(C * nbk, s, s), nblocks, gen)
    h = s // 2
    tws = [t.reshape(C, nbk, h, 2, 2) for t in tws]
    Gn = Gn.reshape(C, nbk * 2, h, h)  # block order: (parent block, half)
    return res.reshape(C, nbk).sum(-1), Gn, tws, kept
