"""Analysis functions against hand-computable cases, plus hypothesis properties."""

import math
import re

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

from structmat.analysis import (
    approximation_curve,
    choose_structures,
    delta_analysis,
    effective_rank,
    empirical_rank,
    plot_approximation_curves,
    plot_rank_capacity,
    plot_spectra,
    principal_angles,
    singular_values,
    stable_rank,
    target_suite,
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


def test_approximation_curve_orders_and_bounds():
    W = target_suite(64)["low rank 8 + 5% noise"]
    pts = approximation_curve(W, [256, 1024, 4096])
    assert {p.structure for p in pts} == {"lowrank", "monarch(nblocks=2)", "monarch(nblocks=4)", "monarch(nblocks=8)"}
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


def test_report_quick(tmp_path):
    from structmat.experiments.report import run_report

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
