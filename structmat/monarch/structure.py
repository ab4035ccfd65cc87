"""Index bookkeeping of the Monarch structure (see docs/monarch-math.md).

Factor shapes: ``blkdiag1`` is ``(k, q, p)``, ``blkdiag2`` is ``(l, s, r)`` with ``l*r == k*q``.
Middle index ``j = a*q + b = c*l + d`` reads input chunk ``a`` (columns ``a*p + t``) and writes
output group ``d`` (rows ``e*l + d``). Block ``(d, a)`` of ``M`` is a free matrix of rank at
most ``t(d, a)``, the number of middle indices it owns.

These functions are pure integer arithmetic on shapes; the fit, the rank capacity and the
analysis all use them, so the convention lives in one place.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Literal

import numpy as np

from ..checks import ceil_div, check_positive_int, check_useful_rank

Layout = Literal["structmat", "reference"]
LAYOUTS: tuple[str, ...] = ("structmat", "reference")


def _nblocks_fit(in_features: int, out_features: int, nblocks: int) -> bool:
    """Every input chunk holds a real column and every output group a real row."""
    return (nblocks - 1) * ceil_div(in_features, nblocks) < in_features and nblocks <= out_features


@dataclass(frozen=True)
class MonarchShape:
    """Factor shapes ``(k, q, p)`` / ``(l, s, r)`` and the logical size ``(out, in)``.

    ``in_features <= k*p`` and ``out_features <= l*s``: inputs are zero-padded to ``k*p`` and
    outputs cropped to ``out_features`` (the padded rows are the last ones of the strided
    output layout).
    """

    k: int
    q: int
    p: int
    l: int  # noqa: E741 - the paper's name
    s: int
    r: int
    in_features: int
    out_features: int

    def __post_init__(self) -> None:
        if self.l * self.r != self.k * self.q:
            raise ValueError(
                f"Monarch factors need l*r == k*q (middle sizes agree), got blkdiag1 "
                f"(k, q, p)=({self.k}, {self.q}, {self.p}) and blkdiag2 (l, s, r)="
                f"({self.l}, {self.s}, {self.r})"
            )
        if not 0 < self.in_features <= self.k * self.p:
            raise ValueError(f"in_features must be in [1, k*p={self.k * self.p}], got {self.in_features}")
        if not 0 < self.out_features <= self.l * self.s:
            raise ValueError(f"out_features must be in [1, l*s={self.l * self.s}], got {self.out_features}")

    @classmethod
    def for_more(
        cls, in_features: int, out_features: int, nblocks: int, rank: int, layout: Layout = "structmat"
    ) -> MonarchShape:
        """MoRe shapes ``(nblocks, rank, p)`` / ``(nblocks, s, rank)`` with ``p = ceil(in/nblocks)``.

        ``layout`` sizes the output blocks when sizes do not divide: ``"structmat"`` takes
        ``s = ceil(out/nblocks)`` (the fewest padded rows), ``"reference"`` the MoRe reference
        code's ``s = ceil(p*out/in)`` (so that its checkpoints load: 1000->2500 with 3 blocks is
        ``s = 835`` there, 834 here). Both are the same when ``nblocks`` divides both sizes.

        Refuses (naming the argument) an ``nblocks`` that would leave a block with only
        padding (the message names the largest ``nblocks`` that works; the reference lowers it
        silently) and a rank that adds no capacity (above :meth:`largest_useful_rank`, the rule
        of :func:`structmat.checks.check_useful_rank`; the same in both layouts, since the
        extra rows of the reference's layout are cropped padding).
        """
        check_positive_int("in_features", in_features)
        check_positive_int("out_features", out_features)
        check_positive_int("nblocks", nblocks)
        check_positive_int("rank", rank)
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        if not _nblocks_fit(in_features, out_features, nblocks):
            best = max(n for n in range(1, nblocks) if _nblocks_fit(in_features, out_features, n))
            raise ValueError(
                f"nblocks={nblocks} does not fit in_features={in_features}, "
                f"out_features={out_features}: with blocks of ceil(size / nblocks) some block "
                f"would hold only padding; the largest nblocks <= {nblocks} that works is {best}"
            )
        largest = cls.largest_useful_rank(in_features, out_features, nblocks)
        check_useful_rank(rank, largest, f"a Monarch of shape ({out_features}, {in_features}) with nblocks={nblocks}")
        p = ceil_div(in_features, nblocks)
        s = ceil_div(out_features, nblocks) if layout == "structmat" else ceil_div(p * out_features, in_features)
        return cls(nblocks, rank, p, nblocks, s, rank, in_features, out_features)

    @staticmethod
    def largest_useful_rank(in_features: int, out_features: int, nblocks: int) -> int:
        """The smallest MoRe block rank at which a Monarch of this size reaches every matrix.

        With MoRe shapes (``k = l = nblocks``, ``q = r = rank``) block ``(d, a)`` of ``M`` owns
        ``t(d, a) = floor(rank / N) + [((d - a*rank) mod N) < rank mod N]`` middle indices
        (``N = nblocks``) and is any matrix of rank ``<= t(d, a)``. It is saturated once
        ``t(d, a) >= m(d, a) = min(real rows of group d, real columns of chunk a)``; the first
        rank that saturates every block lies in ``(N * (max m - 1), N * max m]`` (below, the
        largest block cannot be saturated; at ``N * max m`` every ``t`` is ``max m``). Every
        larger rank gives the same set (all matrices) with more parameters. ``min(out, in)``
        when ``nblocks`` divides both sizes.
        """
        check_positive_int("in_features", in_features)
        check_positive_int("out_features", out_features)
        check_positive_int("nblocks", nblocks)
        p, s = ceil_div(in_features, nblocks), ceil_div(out_features, nblocks)
        if not _nblocks_fit(in_features, out_features, nblocks):
            raise ValueError(f"nblocks={nblocks} does not fit in_features={in_features}, out_features={out_features}")
        n = nblocks
        cols = np.clip(in_features - np.arange(n) * p, 0, p)  # (k,) real columns of chunk a
        rows = ((np.arange(s)[:, None] * n + np.arange(n)[None, :]) < out_features).sum(axis=0)  # (l,)
        m = np.minimum(rows[:, None], cols[None, :])  # (l, k): the rank that saturates block (d, a)
        top = int(m.max())
        d, a = np.arange(n)[:, None], np.arange(n)[None, :]
        for rank in range(n * (top - 1) + 1, n * top + 1):
            t = rank // n + ((d - a * rank) % n < rank % n)
            if (t >= m).all():
                return rank
        raise AssertionError("unreachable: rank N * max m saturates every block")  # pragma: no cover

    @property
    def middle(self) -> int:
        return self.k * self.q

    @classmethod
    def from_factor_shapes(
        cls,
        blkdiag1_shape: tuple[int, int, int],
        blkdiag2_shape: tuple[int, int, int],
        in_features: int | None = None,
        out_features: int | None = None,
    ) -> MonarchShape:
        """General shapes: ``blkdiag1`` ``(k, q, p)``, ``blkdiag2`` ``(l, s, r)`` with ``l*r == k*q``
        (``k != l`` allowed), e.g. the MoRe reference's automatic sizes for 768:
        ``from_factor_shapes((32, 24, 24), (24, 32, 32))``.

        ``in_features`` defaults to ``k*p`` and ``out_features`` to ``l*s``; smaller values mean
        pad-and-crop, as in :meth:`Monarch.from_factors`.
        """
        for name, dims, letters in (
            ("blkdiag1_shape", blkdiag1_shape, "kqp"),
            ("blkdiag2_shape", blkdiag2_shape, "lsr"),
        ):
            if not isinstance(dims, (tuple, list)) or len(dims) != 3:
                raise ValueError(f"{name} must be a tuple of 3 positive integers ({', '.join(letters)}), got {dims!r}")
            for i, (letter, value) in enumerate(zip(letters, dims, strict=True)):
                check_positive_int(f"{name}[{i}] ({letter})", value)
        k, q, p = blkdiag1_shape
        l, s, r = blkdiag2_shape  # noqa: E741 - the paper's name
        in_features = k * p if in_features is None else check_positive_int("in_features", in_features)
        out_features = l * s if out_features is None else check_positive_int("out_features", out_features)
        return cls(k, q, p, l, s, r, in_features, out_features)

    @cached_property
    def middle_index(self) -> dict[str, np.ndarray]:
        """For every middle index j: its chunk ``a``, row ``b`` in blkdiag1, group ``d``,
        column ``c`` in blkdiag2, and its position ``i`` among the indices of block (d, a)."""
        j = np.arange(self.middle)
        a, b = j // self.q, j % self.q
        c, d = j // self.l, j % self.l
        order = np.zeros(self.middle, dtype=np.int64)
        seen = np.zeros((self.l, self.k), dtype=np.int64)
        for jj in range(self.middle):  # ascending j: the i-th index of block (d, a)
            order[jj] = seen[d[jj], a[jj]]
            seen[d[jj], a[jj]] += 1
        return {"a": a, "b": b, "c": c, "d": d, "i": order}

    @cached_property
    def block_ranks(self) -> np.ndarray:
        """``t`` of shape (l, k): ``t[d, a]`` = number of middle indices owned by block (d, a)."""
        t = np.zeros((self.l, self.k), dtype=np.int64)
        idx = self.middle_index
        np.add.at(t, (idx["d"], idx["a"]), 1)
        return t

    @cached_property
    def real_cols(self) -> np.ndarray:
        """(k,): number of non-padding input columns in each chunk a."""
        return np.clip(self.in_features - np.arange(self.k) * self.p, 0, self.p)

    @cached_property
    def real_rows(self) -> np.ndarray:
        """(l,): number of non-cropped output rows in each group d (rows e*l + d)."""
        e = np.arange(self.s)[:, None]
        d = np.arange(self.l)[None, :]
        return ((e * self.l + d) < self.out_features).sum(axis=0)

    @cached_property
    def rank_capacity(self) -> int:
        """The rank of a generic (random) Monarch matrix of this shape, i.e. the maximum.

        ``M = U V^T`` where middle index j owns a column of U supported on output group d(j)
        and a column of V supported on input chunk a(j). By the Lindstrom-Gessel-Viennot
        argument, the generic rank is the largest set of middle indices that can be routed
        through distinct rows and distinct columns: a max flow source -> chunk a (capacity
        real columns) -> group d (capacity t(d, a)) -> sink (capacity real rows).
        """
        from scipy.sparse import csr_matrix  # lazy: scipy.sparse costs ~0.1-0.3 s at import
        from scipy.sparse.csgraph import maximum_flow

        k, l = self.k, self.l
        n = k + l + 2
        src, sink = 0, n - 1
        rows, cols, caps = [], [], []
        for a in range(k):
            rows.append(src), cols.append(1 + a), caps.append(int(self.real_cols[a]))
        t = self.block_ranks
        for d in range(l):
            for a in range(k):
                if t[d, a]:
                    rows.append(1 + a), cols.append(1 + k + d), caps.append(int(t[d, a]))
            rows.append(1 + k + d), cols.append(sink), caps.append(int(self.real_rows[d]))
        graph = csr_matrix((np.array(caps, dtype=np.int32), (rows, cols)), shape=(n, n))
        return int(maximum_flow(graph, src, sink).flow_value)
