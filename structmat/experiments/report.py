"""``structmat report``: the expressivity study of every registered structure family, as markdown + figures.

The families come from the registry (:mod:`structmat.registry`): a newly registered family
appears in every table and figure without an edit here. Every number and every sentence of the
conclusions is computed in the run with the tie rule (:data:`~structmat.analysis.TIE_MARGIN`);
nothing is hard-coded, so where a family loses, the report says so.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import matplotlib.pyplot as plt
import torch

from ..analysis import (
    EXACT_ERROR,
    STYLE,
    TIE_MARGIN,
    CurvePoint,
    StructureChoice,
    approximation_curve,
    choose_structures,
    compare_errors,
    effective_rank,
    empirical_rank,
    plot_approximation_curves,
    plot_curve_grid,
    plot_rank_capacity,
    plot_spectra,
    recovery_markdown,
    recovery_table,
    singular_values,
    stable_rank,
    target_suite,
    winners,
)
from ..analysis.curves import best_per_family, family_of
from ..progress import progress_bar
from ..registry import families, parse_label
from .models import minilm_weight_matrices, smollm2_weight_matrices
from .sweep import RESULTS

BUDGET_FRACTIONS = (1 / 64, 1 / 32, 1 / 16, 1 / 8, 1 / 4)
FIGURE_FORMATS = ("png", "svg")
SPECTRA_FLOOR = 1e-6  # the spectra figure draws sigma_i < 1e-6 sigma_1 at that level (says so in its legend)
ITERATIVE_MAX_SIZE = 256  # families with an iterative fit (butterfly) are fitted on targets up to this size only
ITERATIVE_STEPS = {"butterfly_steps": (150, 300)}  # step budgets of the iterative fits: (quick, full)


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name.lower()).strip("_")[:40]


def _families_for(W: torch.Tensor) -> list[str]:
    """Every registered family; those with an iterative fit only on targets up to ``ITERATIVE_MAX_SIZE``."""
    return [f.name for f in families() if not f.iterative or max(W.shape) <= ITERATIVE_MAX_SIZE]


def _fit_options(quick: bool) -> dict[str, int]:
    """The iterative fits' step budgets, for the options some registered family takes."""
    known = {k for f in families() for k in f.fit_options}
    return {k: steps[0 if quick else 1] for k, steps in ITERATIVE_STEPS.items() if k in known}


def real_weights(quick: bool) -> dict[str, torch.Tensor]:
    """Real layers: MiniLM's (when its package is installed) and, in the full report, SmolLM2's
    (when it loads: its package, ``gguf`` and ``accelerate``)."""
    return minilm_weight_matrices() | ({} if quick else smollm2_weight_matrices())


def run_report(out_dir: str | Path = "report", quick: bool = False, progress: bool | None = None) -> dict:
    """Run the study; write ``report.md`` and figures under ``out_dir``; return the numbers."""
    t0 = time.time()
    out = Path(out_dir)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    n = 64 if quick else 256
    real = real_weights(quick)
    suite = target_suite(n) | real
    curves: dict[str, list[CurvePoint]] = {}
    stats: dict[str, dict[str, float]] = {}
    bar = progress_bar(suite.items(), show=progress, desc="report")
    for name, W in bar:
        bar.set_postfix_str(name[:30])
        dense = W.numel()
        budgets = sorted({max(1, int(f * dense)) for f in BUDGET_FRACTIONS})
        curves[name] = approximation_curve(W, budgets, _families_for(W), **_fit_options(quick))
        stats[name] = {
            "shape": tuple(W.shape),
            "effective_rank": float(effective_rank(W)),
            "stable_rank": float(stable_rank(W)),
            "min_dim": min(W.shape),
        }
    # rank capacity at LoRA-r8's budget for a BERT-base-sized layer, confirmed on random instances
    cap_shape = (256, 256) if quick else (768, 768)
    cap_budget = 8 * sum(cap_shape)
    choices = choose_structures(*cap_shape, cap_budget, nblocks=(1, 2, 4, 8, 16))  # Monarch's nblocks
    empirical = {c.structure: empirical_rank(c, *cap_shape) for c in choices if c.fits}

    figures = {
        "overview": plot_curve_grid(
            curves, "Relative error of the best fit vs parameters used (log x; each target its own y range)"
        ),
        "spectra": plot_spectra(
            {k: singular_values(v, normalize=False) for k, v in suite.items()},
            "Singular values of the targets",
            normalize=True,
            floor=SPECTRA_FLOOR,
        ),
        "families": plot_curve_grid(
            family_curves(curves),
            "Each family's best variant within equal parameter budgets: synthetic targets and real weights",
            xlabel="parameter budget",
        ),
        "rank_capacity": plot_rank_capacity(
            choices, f"Max rank at {cap_budget:,d} parameters (LoRA r=8 budget), {cap_shape[0]}x{cap_shape[1]}"
        ),
    }
    for name, pts in curves.items():
        figures[f"curve_{_slug(name)}"] = plot_approximation_curves(pts, f"{name}: error vs parameters")
    with plt.rc_context(STYLE):  # dpi, tight bounding box, SVG text as text
        for key, fig in figures.items():
            for ext in FIGURE_FORMATS:
                fig.savefig(out / "figures" / f"{key}.{ext}")
            plt.close(fig)

    recovery = recovery_table(16 if quick else 64, steps=100 if quick else 300, progress=bool(progress))
    text = _markdown(curves, stats, choices, empirical, cap_shape, cap_budget, quick, time.time() - t0)
    text += _family_section(curves, stats, set(real))
    text += _recovery_section(recovery)
    text += _delta_capture_section()
    (out / "report.md").write_text(text)
    return {
        "curves": curves,
        "stats": stats,
        "capacity": choices,
        "empirical_rank": empirical,
        "summary": summary_table(curves),
        "families": family_table(curves, stats),
        "recovery": recovery,
        "seconds": time.time() - t0,
        "path": str(out / "report.md"),
    }


def _at_budget(points: list[CurvePoint], fraction: float, dense: int) -> dict[str, CurvePoint]:
    budgets = sorted({p.budget for p in points})
    target = min(budgets, key=lambda b: abs(math.log(b / (fraction * dense))))
    return {p.structure: p for p in points if p.budget == target}


def _verdict(errors: dict[str, float]) -> str:
    """The best structure, or "tie: a, b" when others are within the tie margin of it."""
    best = winners(errors)
    return best[0] if len(best) == 1 else "tie: " + ", ".join(best)


def summary_table(curves: dict[str, list[CurvePoint]], fraction: float = 1 / 16) -> str:
    """Markdown table: relative error of each structure at ~``fraction`` of the dense parameters.

    "-": the structure has no member within the budget. "best" follows the tie rule
    (:data:`~structmat.analysis.compare.TIE_MARGIN`): structures within it of the best are listed as a tie.
    """
    structures = list(dict.fromkeys(p.structure for pts in curves.values() for p in pts))
    lines = [
        "| target | budget | " + " | ".join(structures) + " | best |",
        "|---|---|" + "---|" * (len(structures) + 1),
    ]
    for name, pts in curves.items():
        dense = max(p.budget for p in pts) * 4  # largest budget is dense/4
        row = _at_budget(pts, fraction, dense)
        cells = []
        for s in structures:
            p = row.get(s)
            cells.append("-" if p is None or p.params == 0 else f"{p.rel_error:.3f}")
        fitted = {p.structure: p.rel_error for p in row.values() if p.params > 0}
        best = _verdict(fitted) if fitted else "-"
        budget = next(iter(row.values())).budget
        lines.append(f"| {name} | {budget:,d} | " + " | ".join(cells) + f" | {best} |")
    return "\n".join(lines)


def _n(k: int) -> str:
    return f"{k} budget" + ("" if k == 1 else "s")


def _label(family: str) -> str:
    """A family's display name (its registered label; the name itself for an unregistered one)."""
    parsed = parse_label(family)
    return family if parsed is None else parsed[0].label


def _family_errors(points: list[CurvePoint]) -> dict[int, dict[str, float]]:
    """Budget -> family label -> its best variant's error there (families with a member within the budget)."""
    out: dict[int, dict[str, float]] = {}
    for family, at in best_per_family(points).items():
        for budget, p in at.items():
            out.setdefault(budget, {})[_label(family)] = p.rel_error
    return dict(sorted(out.items()))


def _pair_sentence(lead: str, other: str, per_budget: dict[int, dict[str, float]], every: bool) -> str | None:
    """How ``lead`` and ``other`` compare over the budgets where both have a member (tie rule)."""
    verdicts = [compare_errors(e[lead], e[other]) for e in per_budget.values() if lead in e and other in e]
    if not verdicts:
        return None
    wins, losses, ties = verdicts.count(-1), verdicts.count(1), verdicts.count(0)
    tie_note = f", ties at {_n(ties)}" if ties else ""
    them = f"every {other}" if every else other
    if wins + losses == 0:
        return f"{lead} and {other} tie at every budget ({_n(ties)})"
    if losses == 0:
        return f"**{lead} beats {them}** at {_n(wins)}{tie_note}"
    if wins == 0:
        return f"**{other} beats {lead}** at {_n(losses)}{tie_note}"
    return f"mixed against {other}: {lead} wins at {_n(wins)}, {other} at {_n(losses)}{tie_note}"


def _how_fitted(info: dict) -> str:
    """What an iterative family's fit did, from its ``fit_info`` (the butterfly's: closed form with
    0 gradient steps, or Adam + L-BFGS steps)."""
    steps = int(info.get("adam_steps", 0)) + int(info.get("lbfgs_steps", 0))
    phase = info.get("phase")
    if phase == "closed form" and steps == 0:
        return "found in closed form, 0 gradient steps"
    if phase is None:
        return "fitted"
    return f"{phase}: {info.get('adam_steps', 0)} Adam + {info.get('lbfgs_steps', 0)} L-BFGS steps"


def _conclusions(curves: dict[str, list[CurvePoint]]) -> list[str]:
    """Per target: which family is best at how many budgets, and how the most often best family
    compares with each other family (every sentence from the numbers, with the tie rule)."""
    out = []
    for name, pts in curves.items():
        per_budget = _family_errors(pts)
        best_count: dict[str, int] = {}
        for errors in per_budget.values():
            for label in winners(errors):
                best_count[label] = best_count.get(label, 0) + 1
        if not best_count:
            out.append(f"- **{name}**: no family has a member within these budgets.")
            continue
        ranked = sorted(best_count.items(), key=lambda kv: -kv[1])  # stable: ties keep the registry order
        lead = ranked[0][0]
        variants = {_label(f): len({p.structure for p in pts if family_of(p) == f}) for f in best_per_family(pts)}
        pairs = [_pair_sentence(lead, other, per_budget, variants[other] > 1) for other in variants if other != lead]
        counts = ", ".join(f"{label} at {_n(k)}" for label, k in ranked)
        out.append(f"- **{name}**: best (or tied best) {counts}" + "".join(f"; {p}" for p in pairs if p) + ".")
        for family in families():
            fitted = [p for p in pts if p.family == family.name and p.params > 0]
            if family.iterative and fitted:
                out.append(
                    f"  {family.label} ({fitted[0].params:,d} parameters, {_how_fitted(fitted[0].fit_info)}) reaches "
                    f"error {fitted[0].rel_error:.2e}."
                )
    return out


def _capacity_row(c: StructureChoice, empirical: int | None) -> str:
    if not c.fits:
        return f"| {c.structure} | - (needs {c.min_params:,d}) | - | - | - |"
    return f"| {c.structure} | {c.params:,d} | {c.describe() or '-'} | {c.max_rank} | {empirical} |"


def family_curves(curves: dict[str, list[CurvePoint]]) -> dict[str, dict[str, tuple[list[int], list[float]]]]:
    """Target -> family -> (budgets, errors) of its best variant at each budget where it has a member."""
    return {
        name: {family: (list(at), [p.rel_error for p in at.values()]) for family, at in best_per_family(pts).items()}
        for name, pts in curves.items()
    }


def family_table(curves: dict[str, list[CurvePoint]], stats: dict[str, dict]) -> str:
    """Markdown: per target and budget, each family's best error side by side (bold: best under the
    tie rule; "-": no member within the budget)."""
    seen = {label for pts in curves.values() for e in _family_errors(pts).values() for label in e}
    registered = [f.label for f in families()]
    labels = [x for x in registered if x in seen] + sorted(seen - set(registered))
    lines = [
        "| target | budget (of dense) | " + " | ".join(labels) + " | best |",
        "|---|---|" + "---|" * (len(labels) + 1),
    ]
    for name, pts in curves.items():
        dense = stats[name]["shape"][0] * stats[name]["shape"][1]
        for budget, errors in _family_errors(pts).items():
            best = winners(errors)
            cells = [
                "-"
                if label not in errors
                else (f"**{errors[label]:.3f}**" if label in best else f"{errors[label]:.3f}")
                for label in labels
            ]
            lines.append(
                f"| {name} | {budget:,d} (1/{dense / budget:.0f}) | " + " | ".join(cells) + f" | {_verdict(errors)} |"
            )
    return "\n".join(lines)


def _family_summary(curves: dict[str, list[CurvePoint]], which: set[str]) -> str:
    """ "best (or tied best) at k of n target-budget pairs" per family, over the targets ``which``."""
    count: dict[str, int] = {}
    pairs = 0
    for name in which:
        for errors in _family_errors(curves[name]).values():
            pairs += 1
            for label in winners(errors):
                count[label] = count.get(label, 0) + 1
    ranked = sorted(count.items(), key=lambda kv: -kv[1])
    return ", ".join(f"{label} at {k} of {pairs}" for label, k in ranked) if ranked else "no family fits"


def _family_section(curves: dict[str, list[CurvePoint]], stats: dict[str, dict], real: set[str]) -> str:
    synthetic = {name for name in curves if name not in real}
    lines = [
        "",
        "## Every registered family at equal parameter budgets",
        "",
        f"Families: {', '.join(f'{f.label} (`{f.name}`)' for f in families())}. Each cell is the family's best "
        "variant within the budget (Monarch: best nblocks); budgets are fractions of the dense parameter count.",
        "",
        "![every family at equal budgets](figures/families.png)",
        "",
        family_table(curves, stats),
        "",
        f"- **Synthetic targets**: best (or tied best, tie rule) {_family_summary(curves, synthetic)} "
        "target-budget pairs.",
    ]
    if real:
        lines.append(
            f"- **Real weights** ({', '.join(sorted(real))}): best (or tied best) {_family_summary(curves, real)}."
        )
    else:
        lines.append("- **Real weights**: none loaded (install the MiniLM/SmolLM2 packages: docs/data.md).")
    return "\n".join(lines) + "\n"


def _markdown(curves, stats, choices, empirical, cap_shape, cap_budget, quick, seconds) -> str:
    cmd = "structmat report" + (" --quick" if quick else "")
    lines = [
        f"# structmat report: {', '.join(f.label for f in families())} compared",
        "",
        f"Command: `{cmd}` ({seconds:.0f} s, torch {torch.__version__}, {torch.get_num_threads()} threads). "
        "Errors are relative Frobenius errors `||W - M||_F / ||W||_F` of each family's fit ("
        + "; ".join(f"{f.label}: {f.fit_method}" for f in families())
        + ").",
        "",
        "![error vs parameters, all targets](figures/overview.png)",
        "",
        f"Tie rule: a structure is called better only when its error is lower by more than {TIE_MARGIN:.0%} of the "
        f"other's; closer results are a tie, and errors below {EXACT_ERROR:g} all count as exact. "
        '"-": the structure has no member within the budget. Figures: PNG and SVG in `figures/`.',
        "",
        "## Error at equal parameter budget (~1/16 of the dense matrix)",
        "",
        summary_table(curves),
        "",
        "## Where each structure wins and loses",
        "",
        *_conclusions(curves),
        "",
        f"## Rank capacity at the LoRA r=8 budget ({cap_budget:,d} parameters, {cap_shape[0]}x{cap_shape[1]})",
        "",
        "| structure | parameters used | member | max rank (formula) | rank of a random instance |",
        "|---|---|---|---|---|",
    ]
    lines += [_capacity_row(c, empirical.get(c.structure)) for c in choices]
    lines += [
        "",
        "![rank capacity](figures/rank_capacity.png)",
        "",
        "## Targets",
        "",
        "| target | shape | effective rank | stable rank |",
        "|---|---|---|---|",
    ]
    for name, s in stats.items():
        lines.append(
            f"| {name} | {s['shape'][0]}x{s['shape'][1]} | {s['effective_rank']:.1f} | {s['stable_rank']:.1f} |"
        )
    lines += ["", "![spectra](figures/spectra.png)", "", "## Approximation curves", ""]
    for name in curves:
        lines += [f"### {name}", "", f"![{name}](figures/curve_{_slug(name)}.png)", ""]
    return "\n".join(lines) + "\n"


def _recovery_section(rows) -> str:
    n = rows[0].n if rows else 0
    return "\n".join(
        [
            "",
            f"## Which transforms each structure recovers (n={n})",
            "",
            "Relative error (parameters in real numbers; how). Butterfly: `fit_butterfly` from the dense matrix, "
            "with learned permutations and, for comparison, the same blocks without (gradient only); "
            + ", ".join(f.label for f in families() if f.optimal_error is not None)
            + ": their optimum (best variant) at the learned butterfly's parameter count. Bold: below 1e-4.",
            "",
            recovery_markdown(rows),
            "",
        ]
    )


def _delta_capture_section(results: Path = RESULTS) -> str:
    """The committed ΔW-capture table (``benchmarks/delta_capture.py``: it fine-tunes a model, too
    long for the report itself), or a line saying how to make it."""
    title = "\n## How much of a real fine-tuning update each structure captures\n\n"
    table = results / "delta_capture.md"
    if not table.exists():
        return title + "Not measured yet: `python benchmarks/delta_capture.py`.\n"
    body = table.read_text().split("\n", 1)[1]  # without its own title
    return title + f"From the committed `benchmarks/results/{table.name}`:\n{body}"
