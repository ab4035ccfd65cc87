"""A new structure is one file: a toy family defined here alone ("rows": keep ``rank`` rows of
W), registered for this module only, goes through the fit, the rank capacity, the curves, a
plot and the report's tables with no edit anywhere in the library (#28 item 4).

The toy: ``M`` has ``rank`` non-zero rows, ``R`` (*batch, rank, in) placed at ``rows``; its
optimal fit keeps the ``rank`` rows of W with the largest norms, and its optimal error is the
norm of the other rows. Independent reference: a loop that writes the rows."""

import matplotlib
import pytest
import torch
from torch import nn

import structmat as sm
from structmat import analysis
from structmat.approximation import relative_error
from structmat.base import StructuredLinear
from structmat.checks import check_matrix, check_positive_int, check_useful_rank
from structmat.experiments.report import _conclusions, family_table, summary_table
from structmat.palette import PlotStyle
from structmat.registry import StructureFamily, registered
from structmat.testing import family_test_case

matplotlib.use("Agg")


class Rows(StructuredLinear):
    """``M[rows[k]] = R[k]``, the other rows zero."""

    def __init__(self, in_features, out_features, rank, *, batch_shape=(), device=None, dtype=None):
        check_positive_int("rank", rank)
        check_useful_rank(rank, out_features, f"rows of a ({out_features}, {in_features}) matrix")
        super().__init__(in_features, out_features, batch_shape)
        R = torch.empty(*batch_shape, rank, in_features, device=device, dtype=dtype or torch.get_default_dtype())
        self.R = nn.Parameter(R.uniform_(-(in_features**-0.5), in_features**-0.5))
        self.register_buffer("rows", torch.arange(rank, device=device).expand(*batch_shape, rank).clone())

    @property
    def max_rank(self):
        return min(self.R.shape[-2], self.in_features)

    def _matmul(self, x):
        h = x @ self.R.mT  # (..., n, rank)
        rows = self.rows.unsqueeze(-2) if self.batch_shape else self.rows  # (*batch, 1, rank) or (rank,)
        return h.new_zeros(*h.shape[:-1], self.out_features).scatter(-1, rows.expand_as(h), h)


def fit_rows(W, rank):
    check_matrix("W", W)
    check_useful_rank(rank, W.shape[-2], "rows")
    rows = W.norm(dim=-1).topk(rank, dim=-1).indices  # (..., rank)
    op = Rows(W.shape[-1], W.shape[-2], rank, batch_shape=W.shape[:-2], dtype=W.dtype)
    with torch.no_grad():
        op.rows.copy_(rows)
        op.R.copy_(W.gather(-2, rows.unsqueeze(-1).expand(*rows.shape, W.shape[-1])))
        op.fit_error = relative_error(W, op.to_dense())
    return op


def rows_optimal_error(W, rank):
    check_matrix("W", W)
    check_useful_rank(rank, W.shape[-2], "rows")
    norms2 = W.square().sum(-1).sort(dim=-1).values  # ascending
    return (norms2[..., : W.shape[-2] - rank].sum(-1) / norms2.sum(-1)).sqrt()


def _zero(op):
    op.R.zero_()


TOY = StructureFamily(
    name="rows",
    label="toy rows",
    module=Rows,
    build=lambda in_features, out_features, rank, **kw: Rows(in_features, out_features, rank, **kw),
    num_params=lambda in_features, out_features, rank: rank * in_features,
    rank_capacity=lambda in_features, out_features, rank: min(rank, in_features),
    largest_size=lambda in_features, out_features: out_features,
    fit=fit_rows,
    optimal_error=rows_optimal_error,
    zero_init=_zero,
    style=PlotStyle("#117733", "p", "-"),
    fit_method="the rows of largest norm (optimal)",
    examples=((6, 9, {"rank": 4}), (5, 3, {"rank": 2, "batch_shape": (2,)})),
)


def rows_reference(op):
    """The dense matrix written row by row from ``R`` and ``rows`` (loops, not the module)."""
    R, rows = op.R.detach(), op.rows
    flat_R, flat_rows = R.reshape(-1, *R.shape[-2:]), rows.reshape(-1, rows.shape[-1])
    M = torch.zeros(flat_R.shape[0], op.out_features, op.in_features, dtype=R.dtype)
    for s in range(flat_R.shape[0]):
        for k in range(flat_R.shape[1]):
            M[s, int(flat_rows[s, k])] = flat_R[s, k]
    return M.reshape(*op.batch_shape, op.out_features, op.in_features)


TestRowsBattery = family_test_case(TOY, 0, rows_reference)  # the StructuredLinearTestCase battery
TestRowsBatteryBatched = family_test_case(TOY, 1, rows_reference, dtypes=(torch.float64,))


@pytest.fixture(scope="module", autouse=True)
def toy_registered():
    before = sm.structures()
    with registered(TOY):
        yield
    assert sm.structures() == before  # no global side effect: the registry is as it was


def _W(out=12, inp=10, seed=0):
    return torch.randn(out, inp, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def test_registered_in_one_call():
    assert sm.structures()[-1] == "rows"
    with pytest.raises(ValueError, match="registered already"):
        sm.register_structure(TOY)


def test_fit_meets_its_optimal_error():
    W = _W()
    fitted = sm.registry.get_structure("rows").fit(W, rank=5)
    want = float(sm.optimal_error(W, "rows", rank=5))
    assert abs(float(fitted.fit_error) - want) < 1e-12
    true = float(torch.linalg.matrix_norm(W - rows_reference(fitted)) / torch.linalg.matrix_norm(W))
    assert abs(true - want) < 1e-12


def test_capacity():
    choices = {c.structure: c for c in analysis.choose_structures(10, 12, 45)}
    rows = choices["rows"]
    assert rows.family == "rows" and rows.hparams == {"rank": 4} and rows.params == 40  # 4 rows of 10
    assert rows.max_rank == analysis.empirical_rank(rows, 10, 12) == 4
    assert not analysis.choose_structures(10, 12, 9, ["rows"])[0].fits  # one row needs 10


def test_curves_plot_and_report_tables():
    W = _W()
    points = analysis.approximation_curve(W, [30, 60])
    toy = {p.budget: p for p in points if p.structure == "rows"}
    assert set(toy) == {30, 60} and toy[60].hparams == {"rank": 6}
    assert toy[60].rel_error == pytest.approx(float(sm.optimal_error(W, "rows", rank=6)), abs=1e-12)
    fig = analysis.plot_approximation_curves(points)
    line = next(line for line in fig.axes[0].lines if line.get_label() == "rows")
    assert line.get_color() == "#117733" and line.get_marker() == "p"  # the registered style
    assert "| rows | best |" in summary_table({"W": points}).splitlines()[0]  # a column of its own
    table = family_table({"W": points}, {"W": {"shape": tuple(W.shape)}})
    assert "toy rows" in table.splitlines()[0]
    assert any("toy rows" in line for line in _conclusions({"W": points}))
    assert "toy rows" in analysis.transforms.recovery_columns()


def test_adapter_step(tmp_path):
    """The toy family is an adapter too: a tiny BERT with "rows" updates trains a step, merges,
    and saves and loads, with no edit in structmat.adapters."""
    from helpers import inputs, logits, tiny_bert

    from structmat.adapters import apply_more, load_adapter, merge, more_layers, save_adapter, unmerge

    model = apply_more(tiny_bert(), ["query", "value"], rank=2, structure="rows")
    layer = next(iter(more_layers(model).values()))
    assert isinstance(layer.more_update["default"], Rows)
    torch.testing.assert_close(logits(model, inputs()), logits(tiny_bert(), inputs()), rtol=0, atol=0)  # starts at 0
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    model.train()
    model(**inputs(), labels=torch.tensor([0, 1, 0])).loss.backward()
    opt.step()
    model.eval()
    assert layer.more_update["default"].R.abs().sum() > 0  # the update trained
    trained = logits(model, inputs())
    merge(model)
    torch.testing.assert_close(logits(model, inputs()), trained, rtol=1e-5, atol=1e-6)
    unmerge(model)
    save_adapter(model, tmp_path)
    torch.testing.assert_close(logits(load_adapter(tiny_bert(), tmp_path), inputs()), trained, rtol=0, atol=0)
