"""Rank capacity: the largest rank each registered structure family reaches within a parameter budget."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..approximation import seeded
from ..checks import check_positive_int
from ..registry import get_structure, study_families


@dataclass
class StructureChoice:
    """The largest member of one variant of a structure family that fits a budget."""

    structure: str  # series label: "lowrank", "monarch(nblocks=4)", "kronecker(a_shape=16x16)", "butterfly"
    params: int  # parameters actually used (<= budget; 0: nothing fits)
    max_rank: int  # rank capacity from the family's formula (0: nothing fits)
    family: str = ""  # registered family name ("monarch")
    hparams: dict[str, Any] = field(default_factory=dict)  # the member (the variant alone when nothing fits)
    min_params: int | None = None  # parameters of the variant's smallest member (what a budget must reach)

    @property
    def fits(self) -> bool:
        """False when even the variant's smallest member exceeds the budget (show it as "-", not 0)."""
        return self.params > 0

    @property
    def rank(self) -> int | None:
        """``hparams["rank"]`` (LoRA rank, MoRe block rank, Kronecker terms), None without one."""
        return self.hparams.get("rank")

    @property
    def nblocks(self) -> int | None:
        """``hparams["nblocks"]`` (Monarch), None without one."""
        return self.hparams.get("nblocks")

    def describe(self) -> str:
        """The member's hyper-parameters in words (``"nblocks=4, rank 8"``)."""
        return get_structure(self.family).describe(self.hparams)

    def build(self, in_features: int, out_features: int, dtype: torch.dtype = torch.float64):
        """A random instance (the family's ``build``) of this choice, or None when nothing fits."""
        if not self.fits:
            return None
        return get_structure(self.family).build(in_features, out_features, **self.hparams, dtype=dtype)


def choose_structures(
    in_features: int, out_features: int, budget: int, structures: Sequence[str] | None = None, **options: Any
) -> list[StructureChoice]:
    """For each variant of each registered family, its largest member with at most ``budget`` parameters.

    ``structures``: family names (default: every registered family, in registration order).
    ``options``: a family's name with True/False adds or leaves it out (``butterfly=False``), and
    the families' study options pick their variants (``nblocks=(2, 4, 8)``, Monarch's default;
    ``a_shapes=[(16, 16)]`` for Kronecker, default its balanced shape). Within a variant the
    budget picks the largest ``size`` (rank) that fits: low rank ``budget // (in + out)``,
    Monarch the largest block rank with ``nblocks*rank*(ceil(in/N) + ceil(out/N))`` parameters;
    the butterfly has one size, ``2 n log2 n``.
    """
    check_positive_int("in_features", in_features)
    check_positive_int("out_features", out_features)
    check_positive_int("budget", budget)
    out = []
    for family, variant_options, _ in study_families(structures, options):
        for variant in family.variants(in_features, out_features, **variant_options):
            smallest = family.num_params(in_features, out_features, **family.smallest(**variant))
            hp = family.largest_within_budget(in_features, out_features, budget, **variant)
            label = family.series_label(variant)
            if hp is None:
                out.append(StructureChoice(label, 0, 0, family.name, dict(variant), smallest))
            else:
                params = family.num_params(in_features, out_features, **hp)
                capacity = family.rank_capacity(in_features, out_features, **hp)
                out.append(StructureChoice(label, params, capacity, family.name, hp, smallest))
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
