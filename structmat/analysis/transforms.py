"""Which transforms each structure recovers, at equal parameter count.

For classic fast transforms (DFT, DCT-II, DST-II, Hartley, a circulant convolution, Walsh-Hadamard)
and a Gaussian matrix as control: the relative Frobenius error of

- the butterfly found by :func:`~structmat.fit_butterfly` (permutations learned);
- the butterfly with the same number of blocks but no learned permutation (the fixed structure,
  gradient only: what ``fit_butterfly`` did before the permutations were learnable);
- every registered family with an optimal error (low rank, Monarch with nblocks 2, 4 or 8,
  Kronecker, ...): its best member at the first butterfly's parameter count, with its *optimal*
  error (from singular values).

Parameters are counted in real numbers (a complex number counts 2), so complex and real
structures are compared at equal storage.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import scipy.fft
import scipy.linalg
import torch

from ..butterfly.fit import fit_butterfly
from ..checks import check_positive_int
from ..progress import progress_bar
from ..registry import families
from .capacity import choose_structures

BUTTERFLY_COLUMNS = ("butterfly (learned permutations)", "butterfly (no learned permutation)")


def recovery_columns() -> tuple[str, ...]:
    """The table's columns: the two butterflies, then the label of every registered family with an
    optimal error, in registration order."""
    return BUTTERFLY_COLUMNS + tuple(f.label for f in families() if f.optimal_error is not None)


@dataclass
class RecoveryRow:
    target: str
    n: int
    structure: str  # one of recovery_columns()
    params: int  # real numbers (a complex number counts 2)
    rel_error: float  # ||W - M||_F / ||W||_F (closed-form families: the optimum)
    recovered: bool  # rel_error below the threshold
    detail: str  # how: permutations/blocks found, or the member's hyper-parameters
    seconds: float  # time of the fit (0 for the closed-form optima)


def transform_suite(n: int = 64, seed: int = 0) -> dict[str, torch.Tensor]:
    """Name -> ``(n, n)`` matrix (float64, the DFT complex128), from scipy/torch references."""
    check_positive_int("n", n)
    if n < 2 or n & (n - 1):
        raise ValueError(f"n must be a power of two >= 2, got {n}")
    eye = np.eye(n)
    k = np.arange(n)
    arg = 2 * np.pi * np.outer(k, k) / n
    rng = np.random.default_rng(seed)
    suite = {
        "DFT": torch.fft.fft(torch.eye(n, dtype=torch.complex128), dim=0, norm="ortho"),
        "DCT-II": torch.from_numpy(scipy.fft.dct(eye, norm="ortho", axis=0)),
        "DST-II": torch.from_numpy(scipy.fft.dst(eye, norm="ortho", axis=0)),
        "Hartley": torch.from_numpy((np.cos(arg) + np.sin(arg)) / math.sqrt(n)),
        "circulant convolution": torch.from_numpy(scipy.linalg.circulant(rng.standard_normal(n))),
        "Walsh-Hadamard": torch.from_numpy(scipy.linalg.hadamard(n) / math.sqrt(n)),
        "Gaussian": torch.from_numpy(rng.standard_normal((n, n)) / math.sqrt(n)),
    }
    return suite


def _real_params(module: torch.nn.Module) -> int:
    return sum(p.numel() * (2 if p.is_complex() else 1) for p in module.parameters())


def _describe(bf) -> str:
    shape = "P B P" if bf.nblocks == 1 else ("P B B* P" if bf.nblocks == 2 else f"{bf.nblocks} blocks")
    kind = "complex" if bf.is_complex else "real"
    return f"{shape}, {kind}, {bf.fit_info['phase']}"


def recovery_table(
    n: int = 64,
    targets: dict[str, torch.Tensor] | Iterable[str] | None = None,
    threshold: float = 1e-4,
    steps: int = 500,
    progress: bool | None = None,
) -> list[RecoveryRow]:
    """Fit every structure to every target; one :class:`RecoveryRow` per (target, structure).

    Args:
        n: size of the :func:`transform_suite` targets.
        targets: a dict name -> matrix, or names from the suite (default: the whole suite).
        threshold: relative error below which a target counts as recovered.
        steps: Adam step budget of the butterfly fits that reach the gradient phase (L-BFGS:
            ``steps // 5``).
        progress: a progress bar over the targets (default: shown; where stderr is not a
            terminal, as plain lines); ``False`` hides it.
    """
    suite = transform_suite(n)
    if targets is None:
        chosen = suite
    elif isinstance(targets, dict):
        chosen = targets
    else:
        names = list(targets)
        unknown = [t for t in names if t not in suite]
        if unknown:
            raise ValueError(f"targets must be names from {list(suite)}, got unknown {unknown}")
        chosen = {t: suite[t] for t in names}
    rows: list[RecoveryRow] = []
    bar = progress_bar(chosen.items(), show=progress is not False, desc="recovery table")
    for name, W in bar:
        bar.set_postfix_str(name)
        size = W.shape[-1]
        t0 = time.perf_counter()
        learned = fit_butterfly(W, steps=steps, lbfgs_steps=steps // 5, progress=False)
        t1 = time.perf_counter()
        fixed = fit_butterfly(
            W,
            learn_perm=False,
            nblocks=learned.nblocks,
            complex=learned.is_complex,
            increasing_stride=learned.increasing_stride,
            steps=steps,
            lbfgs_steps=steps // 5,
            progress=False,
        )
        t2 = time.perf_counter()
        budget = _real_params(learned)
        for structure, bf, seconds in zip(BUTTERFLY_COLUMNS, (learned, fixed), (t1 - t0, t2 - t1), strict=True):
            err = float(bf.fit_error.max())
            rows.append(
                RecoveryRow(name, size, structure, _real_params(bf), err, err < threshold, _describe(bf), seconds)
            )
        rows += _closed_form_rows(name, W, budget, threshold)
    return rows


def _closed_form_rows(name: str, W: torch.Tensor, budget: int, threshold: float) -> list[RecoveryRow]:
    """Per registered family with an optimal error, its best member with at most ``budget`` real
    parameters (the lowest optimal error over the family's variants)."""
    per = 2 if W.is_complex() else 1  # real numbers per entry
    out_f, in_f = W.shape[-2:]
    rows = []
    for family in (f for f in families() if f.optimal_error is not None):
        best = None
        for choice in choose_structures(in_f, out_f, max(1, budget // per), [family.name]):
            if not choice.fits:
                continue
            err = float(family.optimal_error(W, **choice.hparams))
            if best is None or err < best.rel_error:
                detail = family.describe(choice.hparams)
                best = RecoveryRow(name, in_f, family.label, choice.params * per, err, err < threshold, detail, 0.0)
        if best is not None:
            rows.append(best)
    return rows


def recovery_markdown(rows: list[RecoveryRow]) -> str:
    """Markdown table: one line per target, ``error (params; how)`` per structure, recovered in bold."""
    if not isinstance(rows, (list, tuple)) or not all(isinstance(r, RecoveryRow) for r in rows):
        raise TypeError(f"rows must be a list of RecoveryRow (from recovery_table), got {type(rows).__name__}")
    if not rows:
        return ""
    by_target: dict[str, dict[str, RecoveryRow]] = {}
    for r in rows:
        by_target.setdefault(r.target, {})[r.structure] = r
    structures = list(dict.fromkeys(r.structure for r in rows))  # in the order they first appear
    lines = [
        "| target (n) | " + " | ".join(structures) + " |",
        "|---|" + "---|" * len(structures),
    ]
    for target, d in by_target.items():
        cells = []
        for s in structures:
            r = d.get(s)
            if r is None:
                cells.append("-")
                continue
            err = f"{r.rel_error:.1e}"
            err = f"**{err}**" if r.recovered else err
            cells.append(f"{err} ({r.params:,d}; {r.detail})")
        n = next(iter(d.values())).n
        lines.append(f"| {target} ({n}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)
