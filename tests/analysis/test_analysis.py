"""Analysis functions against hand-computable cases, plus hypothesis properties."""

import math
import re

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

import structmat as sm
from structmat.analysis import (
    TIE_MARGIN,
    approximation_curve,
    choose_structures,
    compare_errors,
    delta_analysis,
    effective_rank,
    empirical_rank,
    plot_approximation_curves,
    plot_curve_grid,
    plot_rank_capacity,
    plot_spectra,
    principal_angles,
    singular_values,
    stable_rank,
    target_suite,
    winners,
)


def test_identity_and_orthogonal_have_full_effective_rank():
    eye = torch.eye(7, dtype=torch.float64)
    assert effective_rank(eye).item() == pytest.approx(7.0)
    assert stable_rank(eye).item() == pytest.approx(7.0)
    Q, _ = torch.linalg.qr(torch.randn(9, 9, dtype=torch.float64))
    assert effective_rank(Q).item() == pytest.approx(9.0)
    torch.testing.assert_close(singular_values(Q), torch.ones(9, dtype=torch.float64))


def test_rank_one():
    u, v = torch.randn(6, 1, dtype=torch.float64), torch.randn(1, 4, dtype=torch.float64)
    assert effective_rank(u @ v).item() == pytest.approx(1.0, abs=1e-6)
    assert stable_rank(u @ v).item() == pytest.approx(1.0)


def test_diagonal_known_spectrum():
    D = torch.diag(torch.tensor([4.0, 2.0, 1.0, 1.0], dtype=torch.float64))
    p = torch.tensor([0.5, 0.25, 0.125, 0.125], dtype=torch.float64)
    assert effective_rank(D).item() == pytest.approx(math.exp(-(p * p.log()).sum().item()))
    assert stable_rank(D).item() == pytest.approx((16 + 4 + 1 + 1) / 16)
    torch.testing.assert_close(singular_values(D), torch.tensor([1.0, 0.5, 0.25, 0.25], dtype=torch.float64))
    torch.testing.assert_close(singular_values(D, normalize=False), torch.diag(D))


def test_zero_matrix_and_stack():
    assert effective_rank(torch.zeros(3, 3)).item() == 0.0
    assert stable_rank(torch.zeros(3, 3)).item() == 0.0
    assert effective_rank(torch.randn(4, 5, 6)).shape == (4,)


@given(st.integers(1, 12), st.integers(1, 12), st.integers(0, 1000))
def test_effective_and_stable_rank_bounds(m, n, seed):
    W = torch.randn(m, n, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    er, sr = effective_rank(W).item(), stable_rank(W).item()
    assert 1.0 - 1e-9 <= er <= min(m, n) + 1e-9
    assert 1.0 - 1e-9 <= sr <= min(m, n) + 1e-9


def test_principal_angles_known():
    e = torch.eye(4, dtype=torch.float64)
    torch.testing.assert_close(principal_angles(e[:, :2], e[:, :2]), torch.zeros(2, dtype=torch.float64))
    torch.testing.assert_close(principal_angles(e[:, :1], e[:, 1:2]), torch.tensor([math.pi / 2], dtype=torch.float64))
    a = torch.tensor([[1.0], [0.0]], dtype=torch.float64)
    b = torch.tensor([[1.0], [1.0]], dtype=torch.float64)
    assert principal_angles(a, b).item() == pytest.approx(math.pi / 4)


@given(st.integers(2, 10), st.integers(1, 4), st.integers(1, 4), st.integers(0, 1000))
def test_principal_angles_in_range(n, a, b, seed):
    assume(a <= n and b <= n)
    g = torch.Generator().manual_seed(seed)
    angles = principal_angles(
        torch.randn(n, a, generator=g, dtype=torch.float64), torch.randn(n, b, generator=g, dtype=torch.float64)
    )
    assert angles.shape == (min(a, b),)
    assert bool(((angles >= 0) & (angles <= math.pi / 2 + 1e-12)).all())


def test_delta_analysis_hand_case():
    W = torch.diag(torch.tensor([10.0, 1.0, 0.1, 0.01], dtype=torch.float64))
    delta = torch.zeros(4, 4, dtype=torch.float64)
    delta[3, 3] = 2.0  # amplifies the direction W uses least
    res = delta_analysis(W, delta, k=1)
    assert res.effective_rank == pytest.approx(1.0)
    assert res.amplification == pytest.approx(2.0 / 0.01)
    assert res.left_angles.item() == pytest.approx(math.pi / 2)  # top direction of ΔW is e4, of W is e1
    same = delta_analysis(W, 0.5 * W, k=2)
    assert same.amplification == pytest.approx(0.5 * torch.linalg.matrix_norm(W).item() / math.hypot(10, 1))
    torch.testing.assert_close(same.left_angles, torch.zeros(2, dtype=torch.float64), atol=1e-7, rtol=0)


def test_delta_analysis_bad_input():
    with pytest.raises(ValueError, match="same shape"):
        delta_analysis(torch.randn(3, 3), torch.randn(3, 4))
    with pytest.raises(ValueError, match="k=5 is larger"):
        delta_analysis(torch.randn(3, 4), torch.randn(3, 4), k=5)
    with pytest.raises(ValueError, match="delta contains NaN"):
        delta_analysis(torch.randn(3, 3), torch.full((3, 3), float("nan")))


@given(st.integers(4, 40), st.integers(4, 40), st.integers(1, 3000))
def test_capacity_formula_equals_empirical_rank(in_f, out_f, budget):
    for choice in choose_structures(in_f, out_f, budget, nblocks=(1, 2, 3, 4), butterfly=True):
        assert choice.params <= budget
        assert empirical_rank(choice, in_f, out_f) == choice.max_rank, choice


def test_capacity_monarch_vs_lowrank_at_lora_budget():
    choices = {c.structure: c for c in choose_structures(768, 768, 8 * 1536, nblocks=(4,))}
    assert choices["lowrank"].max_rank == 8 and choices["monarch(nblocks=4)"].max_rank == 32
    assert choices["lowrank"].params == choices["monarch(nblocks=4)"].params == 12288
    assert choices["butterfly"].params == 0  # 2*1024*10 parameters do not fit
    assert not choices["butterfly"].fits and choices["butterfly"].min_params == 2 * 1024 * 10
    assert choices["monarch(nblocks=4)"].min_params == 4 * (192 + 192)  # block rank 1


def test_tie_rule():
    assert compare_errors(0.941, 0.942) == 0  # third-decimal differences are no win
    assert compare_errors(0.048, 0.603) == -1 and compare_errors(0.603, 0.048) == 1
    edge = 1 - TIE_MARGIN
    assert compare_errors(0.5 * edge * 0.999, 0.5) == -1 and compare_errors(0.5 * edge * 1.001, 0.5) == 0
    assert compare_errors(6e-8, 1e-15) == 0  # both exact
    assert winners({"a": 0.942, "b": 0.941, "c": 0.99}) == ["a", "b"]
    assert winners({"a": 0.05, "b": 0.6}) == ["a"]
    with pytest.raises(ValueError, match="a must be a finite"):
        compare_errors(float("nan"), 0.5)
    with pytest.raises(ValueError, match="margin"):
        compare_errors(0.5, 0.5, margin=1.5)


def test_approximation_curve_orders_and_bounds():
    W = target_suite(64)["low rank 8 + 5% noise"]
    pts = approximation_curve(W, [256, 1024, 4096])
    monarchs = {"monarch(nblocks=2)", "monarch(nblocks=4)", "monarch(nblocks=8)"}
    assert {p.structure for p in pts} == {"lowrank", *monarchs, "kronecker"}  # not the butterfly (iterative)
    for s in {p.structure for p in pts}:
        errs = [p.rel_error for p in sorted(pts, key=lambda p: p.budget) if p.structure == s]
        assert all(b <= a + 1e-12 for a, b in zip(errs, errs[1:], strict=False))  # more budget, less error
        assert all(0 <= e <= 1 + 1e-12 for e in errs)
    low = next(p for p in pts if p.structure == "lowrank" and p.budget == 1024)  # rank 8 captures the signal
    assert low.rel_error < 0.06


def test_target_suite_contents():
    suite = target_suite(32)
    H = suite["Walsh-Hadamard"]
    torch.testing.assert_close(H @ H.T, torch.eye(32, dtype=torch.float64))
    F = suite["DFT (real embedding)"]
    torch.testing.assert_close(F @ F.T, torch.eye(32, dtype=torch.float64))


def test_plots_return_labelled_figures():
    suite = target_suite(32)
    figs = [
        plot_spectra({k: singular_values(v) for k, v in suite.items()}),
        plot_approximation_curves(approximation_curve(suite["Gaussian random"], [64, 256])),
        plot_rank_capacity(choose_structures(32, 32, 512)),
    ]
    for fig in figs:
        ax = fig.axes[0]
        assert ax.get_xlabel() and ax.get_ylabel() and ax.get_title()
        fig.canvas.draw()
    assert figs[0].axes[0].get_legend() is not None and figs[1].axes[0].get_legend() is not None


def test_each_plot_draws_into_a_given_ax():
    suite = target_suite(32)
    fig, axes = plt.subplots(1, 3)
    got = [
        plot_spectra({k: singular_values(v) for k, v in suite.items()}, ax=axes[0]),
        plot_approximation_curves(approximation_curve(suite["Gaussian random"], [64, 256]), ax=axes[1]),
        plot_rank_capacity(choose_structures(32, 32, 512), ax=axes[2]),
    ]
    assert all(f is fig for f in got) and len(fig.axes) == 3
    assert len(axes[0].lines) >= len(suite) and len(axes[1].lines) >= 4 and len(axes[2].patches) >= 4
    with pytest.raises(TypeError, match="ax must be a matplotlib Axes"):
        plot_spectra({"a": [1.0]}, ax="left")
    plt.close("all")


def test_plots_accept_numpy_input():
    sv = np.array([3.0, 2.0, 0.5], dtype=np.float32)
    fig = plot_spectra({"W": sv, "fit": torch.tensor([3.0, 1.0, 0.0]), "list": [1.0, 0.5, 0.25]})
    assert [line.get_label() for line in fig.axes[0].lines[:1]] == ["W"]
    fig = plot_approximation_curves({"mine": (np.array([100, 400, 0]), np.array([0.5, 0.25, 1.0]))})
    line = fig.axes[0].lines[0]
    np.testing.assert_allclose(line.get_xdata(), [100, 400])  # the 0-parameter point (does not fit) is left out
    np.testing.assert_allclose(line.get_ydata(), [0.5, 0.25])
    fig = plot_rank_capacity({"lowrank": np.int64(8), "monarch": torch.tensor(32), "butterfly": 0})
    assert [p.get_width() for p in fig.axes[0].patches] == [8, 32]  # no bar for what does not fit
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert any("does not fit" in t for t in texts)
    with pytest.raises(ValueError, match=r"spectra\['W'\] contains NaN"):
        plot_spectra({"W": np.array([1.0, np.nan])})
    with pytest.raises(TypeError, match="real numbers"):
        plot_spectra({"W": np.array(["a"])})
    plt.close("all")


def test_plot_spectra_keeps_absolute_values_unless_asked():
    W = torch.randn(20, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    fit = sm.fit_lowrank(W, 3).to_dense().detach()
    sv = {"W": singular_values(W, normalize=False), "fit": singular_values(fit, normalize=False)}
    fig = plot_spectra(sv, normalize=False)
    lines = {line.get_label(): line for line in fig.axes[0].lines}
    np.testing.assert_allclose(lines["W"].get_ydata(), sv["W"].numpy())  # the values as passed, not / sigma_1
    np.testing.assert_allclose(lines["fit"].get_ydata()[:3], sv["fit"][:3].numpy())
    # the fit's round-off tail (rank 3 in float64) is drawn at eps * sigma_1 and the legend says so
    level = torch.finfo(torch.float64).eps * sv["fit"][0].item()
    np.testing.assert_allclose(lines["fit"].get_ydata()[3:], level)
    assert any("round-off" in t.get_text() for t in fig.axes[0].get_legend().get_texts())
    fig = plot_spectra(sv, normalize=True)
    lines = {line.get_label(): line for line in fig.axes[0].lines}
    np.testing.assert_allclose(lines["W"].get_ydata(), (sv["W"] / sv["W"][0]).numpy())
    assert fig.axes[0].get_ylabel() == "σᵢ / σ₁"
    # the clipping level follows the dtype: 1e-9 relative is round-off in float32, information in float64
    vals = [1.0, 1e-3, 1e-9]
    y32 = plot_spectra({"a": torch.tensor(vals, dtype=torch.float32)}).axes[0].lines[0].get_ydata()
    y64 = plot_spectra({"a": torch.tensor(vals, dtype=torch.float64)}).axes[0].lines[0].get_ydata()
    assert y32[-1] == pytest.approx(torch.finfo(torch.float32).eps) and y64[-1] == pytest.approx(1e-9)
    plt.close("all")


def _overlapping_tick_labels(ax) -> list[tuple[str, str]]:
    ax.figure.canvas.draw()
    renderer = ax.figure.canvas.get_renderer()
    boxes = []
    for tick in [*ax.xaxis.get_major_ticks(), *ax.xaxis.get_minor_ticks()]:
        label = tick.label1
        if label.get_visible() and label.get_text() and ax.get_xlim()[0] <= tick.get_loc() <= ax.get_xlim()[1]:
            boxes.append((label.get_text(), label.get_window_extent(renderer)))
    return [(a, b) for i, (a, ba) in enumerate(boxes) for b, bb in boxes[i + 1 :] if ba.overlaps(bb)]


@pytest.mark.parametrize("params", [(2304, 4608, 9216, 18432, 36864), (1024, 16384), (50, 5_000_000)])
def test_log_axis_tick_labels_do_not_collide(params):
    errors = np.linspace(0.95, 0.66, len(params))
    fig = plot_approximation_curves({"lowrank": (np.array(params), errors)})
    assert not _overlapping_tick_labels(fig.axes[0])
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels() if t.get_text()]
    assert len(labels) >= 2
    assert fig.axes[0].get_yscale() == "linear"  # 0.66..0.95: no log scale for less than a factor 3
    assert "clipped" not in fig.axes[0].get_ylabel()
    plt.close("all")


def test_curve_clipping_is_said_in_the_legend_only_when_it_happens():
    fig = plot_approximation_curves({"a": ([10, 100], [0.5, 1e-12]), "b": ([10, 100], [0.9, 0.3])})
    ax = fig.axes[0]
    assert ax.lines[0].get_ydata()[-1] == pytest.approx(1e-6) and ax.get_yscale() == "log"
    assert any("exact fit" in t.get_text() for t in ax.get_legend().get_texts())
    fig = plot_approximation_curves({"b": ([10, 100], [0.9, 0.3])})
    assert not any("exact fit" in t.get_text() for t in fig.axes[0].get_legend().get_texts())
    plt.close("all")


def test_tied_curves_stay_visible():
    """Series drawn over one another (a tie, as for the Gaussian target) show as nested markers:
    each earlier series has larger markers than the ones drawn over it, and its own marker shape."""
    same = (np.array([100, 200, 400]), np.array([0.9, 0.8, 0.7]))
    fig = plot_approximation_curves({"lowrank": same, "monarch(nblocks=2)": same, "monarch(nblocks=4)": same})
    lines = fig.axes[0].lines[:3]
    sizes = [line.get_markersize() for line in lines]
    assert sizes == sorted(sizes, reverse=True) and len(set(sizes)) == 3
    assert len({line.get_marker() for line in lines}) == 3 and len({line.get_linestyle() for line in lines}) == 3
    plt.close("all")


def test_curve_grid_one_panel_per_target():
    suite = target_suite(32)
    curves = {k: approximation_curve(v, [64, 256]) for k, v in list(suite.items())[:3]}
    fig = plot_curve_grid(curves)
    panels = [ax for ax in fig.axes if ax.axison]
    assert [ax.get_title() for ax in panels] == list(curves)
    assert fig.axes[len(curves)].get_legend() is not None  # the spare slot holds the shared legend
    plt.close("all")


def test_report_quick(tmp_path):
    from structmat.experiments.report import _capacity_row, run_report

    result = run_report(tmp_path, quick=True, progress=False)
    text = (tmp_path / "report.md").read_text()
    assert "low rank beats every Monarch" in text  # the truly low-rank target: Monarch loses, and says so
    assert "| Walsh-Hadamard |" in text
    images = re.findall(r"\]\((figures/[^)]+\.png)\)", text)
    assert len(images) >= 7
    for rel in images:
        assert (tmp_path / rel).is_file(), rel
    assert result["summary"].startswith("| target |")
    # the 'which transforms each structure recovers' section, with its rows
    assert "## Which transforms each structure recovers (n=16)" in text
    assert "| DCT-II (16) | **" in text and "| Gaussian (16) | **" not in text
    assert {r.target for r in result["recovery"]} >= {"DFT", "DCT-II", "Gaussian"}
    assert text.index("figures/overview.png") < text.index("## Error at equal parameter budget")  # overview on top
    assert f"more than {TIE_MARGIN:.0%}" in text
    big = {c.structure: c for c in choose_structures(768, 768, 8 * 1536)}  # the full report's capacity case
    assert _capacity_row(big["butterfly"], None) == "| butterfly | - (needs 20,480) | - | - | - |"  # "-", not 0
    for key in ("overview", "spectra", "rank_capacity"):
        assert (tmp_path / "figures" / f"{key}.svg").is_file()


def test_report_says_how_each_butterfly_was_fitted():
    """The report's butterfly sentence comes from the fit's own ``fit_info``: Walsh-Hadamard is
    found in closed form with 0 gradient steps (it used to say "fitted iteratively"), a Gaussian
    target by gradient steps, with their counts."""
    from scipy.linalg import hadamard

    from structmat.experiments.report import _conclusions

    n = 16
    targets = {
        "Walsh-Hadamard": torch.tensor(hadamard(n), dtype=torch.float64),
        "Gaussian": torch.randn(n, n, dtype=torch.float64, generator=torch.Generator().manual_seed(0)),
    }
    curves = {
        name: approximation_curve(W, [n * n], ["butterfly", "lowrank"], butterfly_steps=20)
        for name, W in targets.items()
    }
    lines = "\n".join(_conclusions(curves))
    assert "fitted iteratively" not in lines
    wht = next(p for p in curves["Walsh-Hadamard"] if p.family == "butterfly")
    assert wht.fit_info["phase"] == "closed form" and wht.fit_info["adam_steps"] == 0
    assert "found in closed form, 0 gradient steps" in lines
    gauss = next(p for p in curves["Gaussian"] if p.family == "butterfly")
    assert f"{gauss.fit_info['adam_steps']} Adam + {gauss.fit_info['lbfgs_steps']} L-BFGS steps" in lines
    assert gauss.fit_info["adam_steps"] > 0


def test_report_includes_the_committed_delta_capture_table(tmp_path):
    from structmat.experiments.report import _delta_capture_section

    assert "Not measured yet: `python benchmarks/delta_capture.py`" in _delta_capture_section(tmp_path)
    (tmp_path / "delta_capture.md").write_text("# title\n\n| type | captured |\n|---|---|\n| query | 0.5 |\n")
    section = _delta_capture_section(tmp_path)
    assert "| query | 0.5 |" in section and "# title" not in section
    assert "benchmarks/results/delta_capture.md" in section
