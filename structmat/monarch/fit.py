"""``fit_monarch``: the optimal Monarch approximation of a dense matrix in Frobenius norm.

Block ``(d, a)`` of ``M`` (rows ``e*l + d``, columns ``a*p + t``) is a free matrix of rank at
most ``t(d, a)`` and blocks share no parameter, so the optimum is the truncated SVD of every
block of ``W`` (Eckart-Young), written back into the factor rows/columns of the middle
indices that own the block, ``sqrt(sigma)`` on each side. All blocks go through one batched
decomposition on ``W``'s device: an exact one (``svd``, ``gram``), or the randomized range
finder of :mod:`structmat.randomized`, which only looks for the ``t(d, a)`` triplets a block keeps.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Literal

import torch
import torch.nn.functional as F

from ..approximation import normalized, relative_error_in_parts
from ..checks import check_matrix
from ..randomized import NITER, OVERSAMPLE, check_sketch_args, prefer_randomized, randomized_svd
from .module import Monarch
from .structure import Layout, MonarchShape

Method = Literal["auto", "svd", "gram", "randomized"]
METHODS: tuple[str, ...] = ("auto", "svd", "gram", "randomized")


def _resolve_shape(
    W: torch.Tensor,
    nblocks: int | str | None,
    rank: int | None,
    structure: MonarchShape | None = None,
    layout: Layout = "structmat",
) -> MonarchShape:
    out_f, in_f = W.shape[-2:]
    if structure is not None:
        return _check_structure(W, nblocks, rank, structure)
    nblocks = 4 if nblocks is None else nblocks
    if nblocks == "sqrt":  # classic square Monarch of Dao et al.
        if out_f != in_f or math.isqrt(in_f) ** 2 != in_f:
            raise ValueError(
                f"nblocks='sqrt' (classic Monarch) needs a square W with a square size, got shape {tuple(W.shape[-2:])}"
            )
        nblocks = math.isqrt(in_f)
        rank = in_f // nblocks if rank is None else rank
    return MonarchShape.for_more(in_f, out_f, nblocks, 1 if rank is None else rank, layout)


def _check_structure(W: torch.Tensor, nblocks: object, rank: object, structure: object) -> MonarchShape:
    """``structure`` (general factor shapes) as the fit's shape, refusing nblocks/rank beside it."""
    if nblocks is not None or rank is not None:
        raise ValueError(
            f"give either structure or nblocks/rank, not both (got structure={structure!r}, "
            f"nblocks={nblocks!r}, rank={rank!r})"
        )
    if not isinstance(structure, MonarchShape):
        raise TypeError(
            f"structure must be a MonarchShape (e.g. MonarchShape.from_factor_shapes((k, q, p), (l, s, r))), "
            f"got {type(structure).__name__}"
        )
    if (structure.out_features, structure.in_features) != tuple(W.shape[-2:]):
        raise ValueError(
            f"structure is for (out, in)=({structure.out_features}, {structure.in_features}) but W has shape "
            f"{tuple(W.shape[-2:])}; give in_features/out_features to MonarchShape.from_factor_shapes"
        )
    return structure


def monarch_blocks(W: torch.Tensor, shape: MonarchShape) -> torch.Tensor:
    """The ``(*batch, l, k, s, p)`` grid of blocks of ``W`` (zero-padded to ``(l*s, k*p)``).

    ``blocks[..., d, a, e, t] = W[..., e*l + d, a*p + t]``. A view of a contiguous ``W`` when no
    padding is needed (a padded copy otherwise).
    """
    out_f, in_f = W.shape[-2:]
    pad_cols, pad_rows = shape.k * shape.p - in_f, shape.l * shape.s - out_f
    Wp = F.pad(W, (0, pad_cols, 0, pad_rows)) if pad_cols or pad_rows else W  # F.pad copies even for 0
    Wp = Wp.reshape(*W.shape[:-2], shape.s, shape.l, shape.k, shape.p)  # (..., e, d, a, t)
    return Wp.permute(*range(W.dim() - 2), -3, -2, -4, -1)  # (..., d, a, e, t)


def _active_blocks(Wn: torch.Tensor, shape: MonarchShape) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The blocks that own middle indices, ``(*batch, nact, s, p)``, and their ``(d, a)``, each ``(nact,)``.

    When every block owns one (``rank >= nblocks`` with MoRe shapes) this is a view of ``Wn``
    (the ``(d, a)`` dims merge: ``d``'s stride is ``k`` times ``a``'s); otherwise a copy of the
    active blocks only.
    """
    blocks = monarch_blocks(Wn, shape)  # (*batch, l, k, s, p)
    t = torch.as_tensor(shape.block_ranks)  # (l, k)
    d_act, a_act = torch.nonzero(t, as_tuple=True)
    if d_act.numel() == shape.l * shape.k:  # row-major order of (d, a), as flatten's
        return blocks.flatten(-4, -3), d_act, a_act
    return blocks[..., d_act.to(Wn.device), a_act.to(Wn.device), :, :], d_act, a_act


def _resolve_method(method: Method, kmax: int, s: int, p: int, oversample: int, niter: int) -> str:
    """The method ``"auto"`` stands for with ``kmax`` triplets of ``(s, p)`` blocks (others as given)."""
    if method != "auto":
        return method
    # The range finder when the blocks keep few triplets of many (structmat.randomized's rule);
    # else a Gram eigendecomposition, much cheaper than an SVD for big blocks and exact for the
    # leading triplets (the SVD is more accurate in the tail, which we skip).
    if prefer_randomized(kmax, s, p, oversample, niter):
        return "randomized"
    return "gram" if min(s, p) >= 256 and kmax <= min(s, p) // 4 else "svd"


def _top_singular(
    blocks: torch.Tensor, kmax: int, method: str, oversample: int, niter: int, seed: int | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-``kmax`` singular triplets of a stack of (s, p) blocks: U (.., s, kmax), S, Vh."""
    s, p = blocks.shape[-2:]
    if method == "randomized":
        return randomized_svd(blocks, kmax, oversample=oversample, niter=niter, seed=seed)
    if method == "svd":
        U, S, Vh = torch.linalg.svd(blocks, full_matrices=False)
        return U[..., :kmax], S[..., :kmax], Vh[..., :kmax, :]
    if method != "gram":
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    transpose = s < p  # eigendecompose the smaller Gram matrix
    A = blocks.mT if transpose else blocks  # (.., m, n) with n <= m
    evals, evecs = torch.linalg.eigh(A.mT @ A)  # ascending
    evals, V = evals.flip(-1)[..., :kmax], evecs.flip(-1)[..., :kmax]  # (.., n, kmax)
    S = evals.clamp_min(0).sqrt()
    AV = A @ V  # (.., m, kmax) = U * S
    U = AV / torch.where(S > 0, S, torch.ones_like(S)).unsqueeze(-2)
    if transpose:  # blocks = (A).T = V S U^T
        return V, S, U.mT
    return U, S, V.mT


def _group_parts(
    Wn: torch.Tensor, blkdiag1: torch.Tensor, blkdiag2: torch.Tensor, shape: MonarchShape
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """For each output group ``d``: its rows of ``Wn`` (``(*batch, rows_d, in)``, a strided view)
    and the same rows of ``M`` (computed from the factors, a new tensor), for
    :func:`~structmat.approximation.relative_error_in_parts`.

    Rows ``e*l + d`` of ``M`` are ``blkdiag2[d] @ H_d`` with ``H_d`` ``(r, k*p)``: row ``c`` of
    ``H_d`` is middle index ``j = c*l + d``, i.e. row ``b = j % q`` of ``blkdiag1[a]``
    (``a = j // q``) placed on input chunk ``a``. One group of ``M`` (``1/l`` of it) exists at a time.
    """
    batch = Wn.shape[:-2]
    c = torch.arange(shape.r, device=Wn.device)
    for d in range(shape.l):
        j = c * shape.l + d  # (r,) the middle indices group d reads
        a, b = j // shape.q, j % shape.q
        H = Wn.new_zeros(*batch, shape.r, shape.k, shape.p)
        H[..., c, a, :] = blkdiag1[..., a, b, :]
        M_d = blkdiag2[..., d, :, :] @ H.flatten(-2)  # (*batch, s, k*p)
        yield Wn[..., d :: shape.l, :], M_d[..., : int(shape.real_rows[d]), : shape.in_features]
        del H, M_d  # before the next group's are made


def fit_monarch(
    W: torch.Tensor,
    nblocks: int | str | None = None,
    rank: int | None = None,
    *,
    method: Method = "auto",
    structure: MonarchShape | None = None,
    layout: Layout = "structmat",
    oversample: int = OVERSAMPLE,
    niter: int = NITER,
    seed: int | None = 0,
) -> Monarch:
    """The closest Monarch matrix to ``W`` in Frobenius norm: the optimum in closed form, or with
    the randomized range finder within a hair of it (at most 1.00021x the optimal error on the
    Gaussian, low-rank-plus-noise, MiniLM and SmolLM2 matrices checked for issue #29).

    Args:
        W: ``(..., out, in)``, one matrix or a stack; float dtype, finite. Not modified.
        nblocks: blocks per factor (MoRe's N), default 4, or ``"sqrt"`` for the classic square
            Monarch of Dao et al. (``nblocks = sqrt(n)``, ``rank = n / nblocks`` unless given).
        rank: block rank (MoRe's ``blk_r``), default 1.
        method: ``"svd"`` (batched ``torch.linalg.svd`` of all blocks), ``"gram"`` (batched
            ``eigh`` of the blocks' Gram matrices, faster for large blocks and small ranks),
            ``"randomized"`` (batched randomized range finder for only the ``t(d, a)`` triplets
            each block keeps, :func:`structmat.randomized.randomized_svd`: a few passes over
            ``W`` and no copy of it beyond ``W / max|W|``; near-optimal, not exactly optimal), or
            ``"auto"``: ``"randomized"`` where the needed block rank is small against the block
            size (:func:`structmat.randomized.prefer_randomized`: with the defaults
            ``20 * (t + 20) <= min(s, p)`` for the largest ``t(d, a)``, e.g. ``nblocks=4`` and rank up
            to 20 on 2048-wide layers, up to 124 on 4096-wide ones), else ``"gram"`` for blocks of at least
            256 and block rank at most a quarter of it, else ``"svd"``. Use ``"svd"`` for the exact
            optimum whatever the size.
        structure: general factor shapes instead of ``nblocks``/``rank`` (not both): a
            :class:`MonarchShape`, e.g. ``MonarchShape.from_factor_shapes((32, 24, 24), (24, 32, 32))``
            (``k != l`` allowed); its ``(out_features, in_features)`` must be ``W``'s.
        layout: block sizes when ``nblocks`` does not divide the sizes: ``"structmat"`` or
            ``"reference"`` (the MoRe reference code's; see :meth:`MonarchShape.for_more`).
        oversample, niter: the range finder's extra test vectors and power iterations
            (``method="randomized"``, or ``"auto"`` when it picks it; integers >= 0).
        seed: the range finder's Gaussian test matrix comes from this seed, leaving the global
            RNG alone (``None``: drawn from the global RNG); the same seed gives the same fit.

    Returns:
        A :class:`Monarch` on ``W``'s device and dtype with ``batch_shape = W.shape[:-2]``
        and MoRe shapes ``blkdiag1 (nblocks, rank, ceil(in/nblocks))``,
        ``blkdiag2 (nblocks, ceil(out/nblocks), rank)`` (or ``structure``'s shapes). Its
        ``fit_error`` holds the achieved relative error ``||W - M||_F / ||W||_F`` (shape
        ``W.shape[:-2]``), measured exactly on the returned factors, whatever the method (one
        output group of ``M`` at a time, so that no dense copy of ``M`` is made). Its
        ``fit_info`` says which method ran (``{"method": "gram"}``; what ``"auto"`` chose), with
        the range finder's ``oversample``, ``niter`` and ``seed`` when it was ``"randomized"``.

    Memory: ``W / max|W|`` (one copy of ``W``), the decomposition's own (the thin sketches for
    ``"randomized"``: 1.3x ``W`` in all at 4096x4096, nblocks 4; an exact SVD of the blocks needs
    several times more), and one output group of ``M`` at a time for ``fit_error``.

    The decomposition runs on ``W / max|W|`` (float32 for float16/bfloat16 ``W``) and the
    scale goes back into the factors (``sqrt`` on each side), so the relative error does not
    depend on the scale of ``W``. A rank that adds no capacity is refused, naming the largest
    useful one (:func:`structmat.checks.check_useful_rank`).
    """
    check_matrix("W", W)
    shape = _resolve_shape(W, nblocks, rank, structure, layout)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    check_sketch_args(oversample, niter, seed)
    batch = W.shape[:-2]
    Wn, scale = normalized(W)  # (*batch, out, in) in the compute dtype, (*batch, 1, 1)
    with torch.no_grad():
        blocks, d_act, a_act = _active_blocks(Wn, shape)  # (*batch, nact, s, p), (nact,), (nact,)
        kmax = min(int(shape.block_ranks.max()), shape.s, shape.p)
        method = _resolve_method(method, kmax, shape.s, shape.p, oversample, niter)
        U, S, Vh = _top_singular(blocks, kmax, method, oversample, niter, seed)
        del blocks
        # U (*batch, nact, s, kmax), S (*batch, nact, kmax), Vh (*batch, nact, kmax, p)

        pos_of = torch.full((shape.l, shape.k), -1, dtype=torch.long)
        pos_of[d_act, a_act] = torch.arange(d_act.numel())
        idx = {key: torch.as_tensor(v) for key, v in shape.middle_index.items()}
        pos = pos_of[idx["d"], idx["a"]]  # (J,) which active block owns middle index j
        valid = idx["i"] < kmax  # beyond min(s, p) a block is already exact
        ii = idx["i"].clamp(max=kmax - 1)
        dev = W.device
        pos, ii, valid = pos.to(dev), ii.to(dev), valid.to(dev)
        sq = S.sqrt()[..., pos, ii] * valid  # (*batch, J)
        v_rows = Vh[..., pos, ii, :] * sq.unsqueeze(-1)  # (*batch, J, p)
        u_cols = U.mT[..., pos, ii, :] * sq.unsqueeze(-1)  # (*batch, J, s)

        blkdiag1 = Wn.new_zeros(*batch, shape.k, shape.q, shape.p)
        blkdiag1[..., idx["a"].to(dev), idx["b"].to(dev), :] = v_rows
        blkdiag2_t = Wn.new_zeros(*batch, shape.l, shape.r, shape.s)
        blkdiag2_t[..., idx["d"].to(dev), idx["c"].to(dev), :] = u_cols
        root = scale.sqrt().unsqueeze(-1)  # (*batch, 1, 1, 1): half of the scale on each factor
        monarch = Monarch.from_factors(
            (blkdiag1 * root).to(W.dtype),
            (blkdiag2_t.mT * root).to(W.dtype).contiguous(),
            shape.in_features,
            shape.out_features,
        )
        # measured on the returned factors (rounded to W's dtype), brought back to W / scale
        w1, w2 = monarch.blkdiag1.to(Wn.dtype) / root, monarch.blkdiag2.to(Wn.dtype) / root
        monarch.fit_error = relative_error_in_parts(Wn, _group_parts(Wn, w1, w2, shape)).to(W.dtype)
    monarch.fit_info = {"method": method}
    if method == "randomized":
        monarch.fit_info |= {"oversample": oversample, "niter": niter, "seed": seed}
    return monarch


def monarch_optimal_error(
    W: torch.Tensor, nblocks: int | str | None = None, rank: int | None = None, *, structure: MonarchShape | None = None
) -> torch.Tensor:
    """The optimal relative error ``min_M ||W - M||_F / ||W||_F`` over Monarch ``M``.

    ``sqrt(sum over blocks (d, a) of sum_{i >= t(d, a)} sigma_i(W_(d,a))^2) / ||W||_F``,
    from the singular values of every block; shape ``W.shape[:-2]``, in ``W``'s real dtype (0 for
    a zero ``W``). ``nblocks`` (default 4), ``rank`` and ``structure`` as in :func:`fit_monarch`.
    ``W`` may be complex (the optimum over complex Monarch factors). Computed on ``W / max|W|``,
    so it does not depend on the scale of ``W``.
    """
    check_matrix("W", W, allow_complex=True)
    shape = _resolve_shape(W, nblocks, rank, structure)
    Wn, _ = normalized(W)
    with torch.no_grad():
        sv = torch.linalg.svdvals(monarch_blocks(Wn, shape))  # (*batch, l, k, min(s, p))
        t = torch.as_tensor(shape.block_ranks, device=W.device)
        tail = torch.arange(sv.shape[-1], device=W.device) >= t.unsqueeze(-1)  # (l, k, min)
        err2 = (sv.square() * tail).sum(dim=(-3, -2, -1))
        total = sv.square().sum(dim=(-3, -2, -1))  # ||W / max|W| ||_F^2: the blocks tile W
        err = torch.where(total > 0, err2 / torch.where(total > 0, total, torch.ones_like(total)), total).sqrt()
        return err.to(W.real.dtype)
