"""Rank capacity: the largest rank each structure can reach within a parameter budget."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..approximation import seeded
from ..butterfly import Butterfly
from ..butterfly.module import next_power_of_two
from ..checks import check_bool, check_positive_int, check_sequence
from ..lowrank import LowRank
from ..monarch import Monarch, MonarchShape


@dataclass
class StructureChoice:
    """The largest member of a structure family that fits a budget."""

    structure: str  # "lowrank", "monarch(nblocks=4)", "butterfly"
    params: int  # parameters actually used (<= budget)
    max_rank: int  # rank capacity from the formula (0: nothing fits)
    rank: int | None = None  # LoRA rank / MoRe block rank
    nblocks: int | None = None
    min_params: int | None = None  # parameters of the family's smallest member (what a budget must reach)

    @property
    def fits(self) -> bool:
        """False when even the family's smallest member exceeds the budget (show it as "-", not 0)."""
        return self.params > 0

    def build(self, in_features: int, out_features: int, dtype=torch.float64):
        """A random instance (kaiming init) of this choice, or None when nothing fits."""
        if self.params == 0:
            return None
        if self.structure == "lowrank":
            return LowRank(in_features, out_features, self.rank, dtype=dtype)
        if self.structure == "butterfly":
            return Butterfly(in_features, out_features, init="randn", dtype=dtype)
        return Monarch(in_features, out_features, self.nblocks, self.rank, dtype=dtype)


def _monarch_params(in_f: int, out_f: int, nblocks: int, rank: int) -> int:
    st = MonarchShape.for_more(in_f, out_f, nblocks, rank)
    return nblocks * rank * (st.p + st.s)


def choose_structures(
    in_features: int, out_features: int, budget: int, nblocks: tuple[int, ...] = (2, 4, 8), butterfly: bool = True
) -> list[StructureChoice]:
    """For each family, the largest member with at most ``budget`` parameters.

    Low rank: rank ``budget // (in + out)``. Monarch (MoRe shapes) for each ``nblocks``: the
    largest block rank whose ``nblocks*rank*(ceil(in/N) + ceil(out/N))`` fits. Butterfly: its
    one size, ``2 n log2 n``, if it fits.
    """
    check_positive_int("in_features", in_features)
    check_positive_int("out_features", out_features)
    check_positive_int("budget", budget)
    nblocks = tuple(check_sequence("nblocks", nblocks))
    check_bool("butterfly", butterfly)
    for n in nblocks:
        check_positive_int("nblocks", n)
    cap = min(in_features, out_features)
    out = []
    r = min(budget // (in_features + out_features), cap)
    out.append(
        StructureChoice("lowrank", r * (in_features + out_features), r, rank=r, min_params=in_features + out_features)
    )
    for n in nblocks:
        try:  # an nblocks that leaves a block with only padding: no member of this family
            largest = MonarchShape.largest_useful_rank(in_features, out_features, n)
        except ValueError:
            continue
        smallest = _monarch_params(in_features, out_features, n, 1)
        r = 0
        while r < largest and _monarch_params(in_features, out_features, n, r + 1) <= budget:
            r += 1
        if r == 0:
            out.append(StructureChoice(f"monarch(nblocks={n})", 0, 0, rank=0, nblocks=n, min_params=smallest))
        else:
            st = MonarchShape.for_more(in_features, out_features, n, r)
            out.append(
                StructureChoice(
                    f"monarch(nblocks={n})",
                    _monarch_params(in_features, out_features, n, r),
                    st.rank_capacity,
                    rank=r,
                    nblocks=n,
                    min_params=smallest,
                )
            )
    if butterfly:
        size = next_power_of_two(max(in_features, out_features, 2))
        p = 2 * size * (size.bit_length() - 1)
        out.append(StructureChoice("butterfly", p if p <= budget else 0, cap if p <= budget else 0, min_params=p))
    return out


def empirical_rank(choice: StructureChoice, in_features: int, out_features: int, seed: int = 0) -> int:
    """Rank of a random float64 instance of ``choice`` (0 when nothing fits), drawn from ``seed``
    in a forked generator: the global RNG is left as it was."""
    if not isinstance(choice, StructureChoice):
        raise TypeError(f"choice must be a StructureChoice (from choose_structures), got {type(choice).__name__}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {seed!r}")
    with seeded(seed):
        op = choice.build(in_features, out_features)
    return 0 if op is None else int(torch.linalg.matrix_rank(op.to_dense().detach()))
