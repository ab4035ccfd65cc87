"""Every public function and every CLI subcommand, driven with generated bad inputs (issue 18).

For each public name of ``structmat``, ``structmat.analysis`` and ``structmat.adapters`` a spec
gives valid arguments; hypothesis replaces one of them by a bad value (wrong dtype or shape,
sizes 0/1/negative, NaN/inf, non-tensors, meta tensors, bad strings). The call must either
return a correct result (checked against a dense reference from tests/helpers.py or numpy) or
raise ValueError/TypeError whose message names the argument (or an argument it is checked
against, for a combination). Any other exception, or a NaN in a result, fails.

The CLI: every invalid option value is an argparse error (exit status 2, the option named)
before anything loads; one subprocess run checks that no traceback reaches the terminal.
"""

from __future__ import annotations

import contextlib
import functools
import math
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import matplotlib
import numpy as np
import pytest
import torch
from helpers import REPO, dense_reference, tiny_bert
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import structmat
from structmat import adapters, analysis

matplotlib.use("Agg")

# -- bad values -----------------------------------------------------------------------------


def _t(*shape: int, dtype=torch.float32, fill=None, device="cpu"):
    if device == "meta":
        return torch.empty(*shape, dtype=dtype, device="meta")
    t = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(dtype)
    if fill is not None:
        t = t.clone()
        t.view(-1)[0] = fill
    return t


BAD_TENSORS = [
    lambda: _t(0, 4),
    lambda: _t(4),
    lambda: _t(),
    lambda: _t(1, 1),
    lambda: _t(2, 3, 5),
    lambda: _t(8, 8, dtype=torch.float64),
    lambda: _t(8, 8, dtype=torch.float16),
    lambda: _t(8, 8, dtype=torch.bfloat16),
    lambda: torch.ones(8, 8, dtype=torch.long),
    lambda: torch.ones(8, 8, dtype=torch.bool),
    lambda: _t(8, 8, dtype=torch.complex64),
    lambda: _t(8, 8, fill=float("nan")),
    lambda: _t(8, 8, fill=float("inf")),
    lambda: _t(8, 8, device="meta"),
    lambda: _t(8, 8) * 1e30,
    lambda: torch.zeros(8, 8),
]
BAD_OBJECTS = [None, "", "abc", "[", "all-linear", 1.5, [1.0, 2.0], (), {}, object(), nn.Conv2d(2, 2, 1), b"x"]

bad_values = st.one_of(
    st.sampled_from(BAD_TENSORS).map(lambda make: make()),
    st.sampled_from(BAD_OBJECTS),
    st.integers(-3, 2),
    st.sampled_from([float("nan"), float("inf"), -1.0, 0.0, 1e30]),
    st.booleans(),
)


# -- specs ----------------------------------------------------------------------------------


@dataclass
class Spec:
    fn: Callable
    args: dict[str, Callable[[], Any]]  # name -> factory of a valid value
    check: Callable[[Any, dict], None] | None = None  # checks an accepted call's result
    names: tuple[str, ...] = ()  # other words an error may use for an argument (in_features, ...)
    context: bool = False  # fn is a context manager
    skip_args: tuple[str, ...] = field(default_factory=tuple)


def W(out=8, inp=8, dtype=torch.float64):
    return _t(out, inp, dtype=dtype)


def _assert_no_nan(value) -> None:
    if isinstance(value, torch.Tensor) and not value.is_meta and (value.is_floating_point() or value.is_complex()):
        assert not bool(torch.isnan(value).any()), "NaN in a result"
    elif isinstance(value, float):
        assert not math.isnan(value), "NaN in a result"


def check_module(op, kw) -> None:
    """A structure: forward equals x @ M.T with M from the independent reference."""
    assert isinstance(op, structmat.StructuredLinear)
    M = dense_reference(op).double()
    real = op.dtype.to_real() if op.dtype.is_complex else op.dtype
    x = torch.randn(*op.batch_shape, 3, op.in_features, dtype=real)
    got = op(x).to(M.dtype if M.is_complex() else torch.float64)
    want = x.to(M.dtype if M.is_complex() else torch.float64) @ M.mT
    tol = 1e-2 if real in (torch.float16, torch.bfloat16) else 1e-4
    torch.testing.assert_close(got, want, rtol=tol, atol=tol * max(1.0, float(want.abs().max())))
    assert op.dtype == (kw.get("dtype") or op.dtype)


def check_fit(op, kw) -> None:
    """A fitted structure: a correct module whose fit_error is the true error of its matrix."""
    check_module(op, kw)
    M = dense_reference(op)
    target = kw["W"].cdouble() if (kw["W"].is_complex() or M.is_complex()) else kw["W"].double()
    M = M.to(target.dtype)
    scale = target.abs().amax(dim=(-2, -1), keepdim=True).clamp_min(1e-300)
    den = torch.linalg.matrix_norm(target / scale)
    true = torch.where(den > 0, torch.linalg.matrix_norm((target - M) / scale) / den.clamp_min(1e-300), 0.0)
    tol = 2e-2 if kw["W"].dtype in (torch.float16, torch.bfloat16) else 1e-3
    torch.testing.assert_close(op.fit_error.double(), true.double(), rtol=tol, atol=tol)


def check_lowrank_optimum(err, kw) -> None:
    A = kw["W"].double().numpy()
    sv = np.linalg.svd(A, compute_uv=False)
    want = np.sqrt((sv[..., kw["rank"] :] ** 2).sum(-1) / np.maximum((sv**2).sum(-1), 1e-300))
    np.testing.assert_allclose(err.double().numpy(), want, atol=1e-2 if kw["W"].dtype.itemsize == 2 else 1e-5)


def check_unit_interval(value, kw) -> None:
    values = torch.as_tensor(value, dtype=torch.float64)
    assert bool(((values >= 0) & (values <= 1 + 1e-6)).all())


def check_singular_values(sv, kw) -> None:
    A = kw["W"].to(torch.complex128 if kw["W"].is_complex() else torch.float64).numpy()
    want = np.linalg.svd(A, compute_uv=False)
    if kw.get("normalize", True):
        want = want / np.maximum(want[..., :1], 1e-300)
    np.testing.assert_allclose(sv.double().numpy(), want, rtol=1e-2, atol=1e-2 * max(1.0, float(np.abs(want).max())))


def check_monarch_multiply(y, kw) -> None:
    from helpers import entrywise_monarch

    M = entrywise_monarch(kw["blkdiag1"].double(), kw["blkdiag2"].double())
    torch.testing.assert_close(y.double(), kw["x"].double() @ M.mT, rtol=1e-4, atol=1e-4, equal_nan=True)


def check_hadamard(op, kw) -> None:
    import scipy.linalg

    H = torch.from_numpy(scipy.linalg.hadamard(kw["n"]).astype(np.float64))
    torch.testing.assert_close(dense_reference(op).double(), H / math.sqrt(kw["n"]) if kw["normalized"] else H)


def check_dft(op, kw) -> None:
    F = torch.fft.fft(torch.eye(kw["n"], dtype=torch.complex128), dim=0, norm="ortho" if kw["normalized"] else None)
    torch.testing.assert_close(dense_reference(op).to(torch.complex128), F, rtol=1e-5, atol=1e-5)


def check_angles(angles, kw) -> None:
    assert bool(((angles >= 0) & (angles <= math.pi / 2 + 1e-6)).all())


def check_numerical_rank(rank, kw) -> None:
    A = kw["W"].to(torch.complex128 if kw["W"].is_complex() else torch.float64)
    assert bool((rank <= min(A.shape[-2:])).all())


def check_choices(choices, kw) -> None:
    assert all(c.params <= kw["budget"] for c in choices)


def check_figure(fig, kw) -> None:
    import matplotlib.pyplot as plt

    assert isinstance(fig, matplotlib.figure.Figure)
    plt.close(fig)


def check_unchanged_outputs(model, kw) -> None:
    """A freshly adapted model computes what the base model did (zero-init update)."""
    batch = {"input_ids": torch.arange(8).reshape(1, 8) % 60}
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, tiny_bert()(**batch).logits, rtol=1e-5, atol=1e-5)


def adapted():
    return adapters.apply_more(tiny_bert(), target_modules=["query"], nblocks=4, rank=1)


def saved_adapter_dir():
    folder = tempfile.mkdtemp(prefix="structmat-bad-inputs-")
    adapters.save_adapter(adapted(), folder)
    return folder


def _choice():
    return analysis.choose_structures(16, 16, 300)[1]


def _curve():
    return [analysis.CurvePoint("lowrank", 64, 64, 0.5, 2), analysis.CurvePoint("lowrank", 128, 128, 0.3, 4)]


def reference_checkpoint_file():
    folder = tempfile.mkdtemp(prefix="structmat-bad-inputs-")
    model = tiny_bert()
    q = model.bert.encoder.layer[0].attention.self.query  # 32 -> 32, 4 blocks of rank 1
    state = {"bert.encoder.layer.0.attention.self.query.blkdiag1": torch.randn(4, 1, q.in_features // 4)}
    state["bert.encoder.layer.0.attention.self.query.blkdiag2"] = torch.randn(4, q.out_features // 4, 1)
    torch.save(state, f"{folder}/adapter.pt")
    return f"{folder}/adapter.pt"


def _recovery_rows():
    return [analysis.RecoveryRow("dft", 8, "monarch", 32, 0.5, False, "nblocks 2", 0.0)]


def _family_fields():  # a valid StructureFamily's required fields: low rank's, under another name
    low = structmat.registry.get_structure("lowrank")
    keys = ("label", "module", "build", "num_params", "rank_capacity", "fit", "zero_init", "style", "largest_size")
    return {"name": lambda: "fuzzed"} | {k: functools.partial(getattr, low, k) for k in keys}


def _fuzzed_family():
    return structmat.StructureFamily(**{k: make() for k, make in _family_fields().items()})


def _register_and_undo(family, replace):
    """register_structure, leaving the registry as it was (no global side effect)."""
    before = structmat.structures()
    try:
        return structmat.register_structure(family, replace=replace)
    finally:
        if structmat.structures() != before:
            structmat.unregister_structure(family.name)


def _unregister_after_registering(name):
    with structmat.registry.registered(_fuzzed_family()):
        return structmat.unregister_structure(name)


VALID_W = {"W": W}
SPECS: dict[str, Spec] = {
    # structmat
    "Monarch": Spec(
        structmat.Monarch,
        {"in_features": lambda: 16, "out_features": lambda: 12, "nblocks": lambda: 4, "rank": lambda: 2}
        | {"init1": lambda: "kaiming", "init2": lambda: "zeros", "batch_shape": lambda: (), "dtype": lambda: None},
        check_module,
    ),
    "LowRank": Spec(
        structmat.LowRank,
        {"in_features": lambda: 16, "out_features": lambda: 12, "rank": lambda: 2, "batch_shape": lambda: ()}
        | {"init_A": lambda: "kaiming", "dtype": lambda: None},
        check_module,
    ),
    "Butterfly": Spec(
        structmat.Butterfly,
        {"in_features": lambda: 8, "out_features": lambda: 6, "init": lambda: "ortho", "batch_shape": lambda: ()}
        | {"dtype": lambda: None, "complex": lambda: False},
        check_module,
    ),
    "StructuredLinear": Spec(
        lambda x: structmat.Monarch(8, 8, 2, 1, dtype=torch.float64)(x), {"x": lambda: _t(3, 8, dtype=torch.float64)}
    ),
    "Kronecker": Spec(
        structmat.Kronecker,
        {"in_features": lambda: 12, "out_features": lambda: 8, "a_shape": lambda: (2, 3), "rank": lambda: 2}
        | {"init_B": lambda: "zeros", "batch_shape": lambda: (), "dtype": lambda: None},
        check_module,
    ),
    "hadamard_butterfly": Spec(
        structmat.hadamard_butterfly, {"n": lambda: 8, "normalized": lambda: False}, check_hadamard
    ),
    "dft_butterfly": Spec(structmat.dft_butterfly, {"n": lambda: 8, "normalized": lambda: True}, check_dft),
    "fit_monarch": Spec(
        structmat.fit_monarch,
        VALID_W
        | {"nblocks": lambda: 2, "rank": lambda: 2, "method": lambda: "randomized"}
        | {"oversample": lambda: 2, "niter": lambda: 1, "seed": lambda: 0},
        check_fit,
        names=("in_features", "out_features"),
    ),
    "fit_lowrank": Spec(
        structmat.fit_lowrank,
        VALID_W
        | {"rank": lambda: 2, "method": lambda: "randomized", "oversample": lambda: 2, "niter": lambda: 1}
        | {"seed": lambda: 0},
        check_fit,
    ),
    "fit_butterfly": Spec(
        structmat.fit_butterfly,
        VALID_W
        | {"steps": lambda: 2, "lbfgs_steps": lambda: 0, "restarts": lambda: 1, "progress": lambda: False}
        | {"lr": lambda: 0.05, "complex": lambda: None},
        check_fit,
    ),
    "fit_kronecker": Spec(structmat.fit_kronecker, VALID_W | {"a_shape": lambda: (2, 4), "rank": lambda: 3}, check_fit),
    "optimal_error": Spec(
        structmat.optimal_error,
        VALID_W | {"structure": lambda: "lowrank", "rank": lambda: 2},
        check_lowrank_optimum,
    ),
    "StructureFamily": Spec(structmat.StructureFamily, _family_fields()),
    "register_structure": Spec(_register_and_undo, {"family": _fuzzed_family, "replace": lambda: False}),
    "unregister_structure": Spec(_unregister_after_registering, {"name": lambda: "fuzzed"}),
    "structures": Spec(structmat.structures, {}),
    "monarch_multiply": Spec(
        structmat.monarch_multiply,
        {"x": lambda: _t(3, 8), "blkdiag1": lambda: _t(2, 2, 4), "blkdiag2": lambda: _t(2, 4, 2)},
        check_monarch_multiply,
    ),
    # structmat.analysis
    "singular_values": Spec(analysis.singular_values, VALID_W | {"normalize": lambda: True}, check_singular_values),
    "effective_rank": Spec(analysis.effective_rank, VALID_W),
    "stable_rank": Spec(analysis.stable_rank, VALID_W),
    "numerical_rank": Spec(analysis.numerical_rank, VALID_W | {"rtol": lambda: None}, check_numerical_rank),
    "principal_angles": Spec(analysis.principal_angles, {"A": lambda: W(8, 3), "B": lambda: W(8, 2)}, check_angles),
    "delta_analysis": Spec(analysis.delta_analysis, {"W": W, "delta": lambda: W() * 0.1, "k": lambda: 2}),
    "DeltaAnalysis": Spec(lambda W: analysis.delta_analysis(W, W, k=1), VALID_W),
    "choose_structures": Spec(
        analysis.choose_structures,
        {"in_features": lambda: 16, "out_features": lambda: 16, "budget": lambda: 300, "nblocks": lambda: (2, 4)},
        check_choices,
    ),
    "StructureChoice": Spec(lambda budget: analysis.choose_structures(8, 8, budget), {"budget": lambda: 100}),
    "empirical_rank": Spec(
        analysis.empirical_rank,
        {"choice": _choice, "in_features": lambda: 16, "out_features": lambda: 16, "seed": lambda: 0},
        names=("nblocks", "rank"),
    ),
    "approximation_curve": Spec(
        analysis.approximation_curve,
        VALID_W | {"budgets": lambda: [32, 64], "nblocks": lambda: (2,), "butterfly": lambda: False},
        lambda points, kw: check_unit_interval([p.rel_error for p in points], kw),
        names=("budget",),
    ),
    "CurvePoint": Spec(lambda W: analysis.approximation_curve(W, [40]), VALID_W, names=("budget",)),
    "target_suite": Spec(analysis.target_suite, {"n": lambda: 16}),
    "plot_spectra": Spec(analysis.plot_spectra, {"spectra": lambda: {"a": torch.rand(4)}}, check_figure),
    "plot_approximation_curves": Spec(analysis.plot_approximation_curves, {"points": _curve}, check_figure),
    "plot_rank_capacity": Spec(
        analysis.plot_rank_capacity, {"choices": lambda: analysis.choose_structures(16, 16, 300)}, check_figure
    ),
    # structmat.adapters
    "apply_more": Spec(
        adapters.apply_more,
        {"model": tiny_bert, "target_modules": lambda: ["query"], "nblocks": lambda: 4, "rank": lambda: 1}
        | {"dropout": lambda: 0.0, "exclude_modules": lambda: None, "adapter_name": lambda: "default"},
        check_unchanged_outputs,
        names=("in_features", "out_features", "config"),
    ),
    "apply_lora": Spec(
        adapters.apply_lora,
        {"model": tiny_bert, "target_modules": lambda: ["query"], "rank": lambda: 2},
        check_unchanged_outputs,
        names=("r", "target"),
    ),
    "MoReConfig": Spec(
        adapters.MoReConfig,
        {"target_modules": lambda: ["query"], "nblocks": lambda: 4, "rank": lambda: 2, "dropout": lambda: 0.0}
        | {"structure": lambda: "monarch", "init_weights": lambda: True, "rank_pattern": lambda: {}},
    ),
    "MoReLinear": Spec(
        lambda base_layer, adapter_name, structure, dropout: adapters.MoReLinear(
            base_layer,
            adapter_name,
            structure=structure,
            dropout=dropout,
            settings={"rank": 1, "nblocks": 2, "layout": "structmat", "structure_options": {}},
        ),  # fmt: skip
        {"base_layer": lambda: nn.Linear(8, 8), "adapter_name": lambda: "default", "structure": lambda: "monarch"}
        | {"dropout": lambda: 0.0},
        names=("in_features", "out_features", "base_layer"),
    ),
    "MoReModel": Spec(
        lambda model, config: adapters.MoReModel(model, config, "default"),
        {"model": tiny_bert, "config": lambda: adapters.MoReConfig(target_modules=["query"], rank=1)},
        names=("peft_config", "MoReConfig"),
    ),
    "allow_nonfinite_weights": Spec(adapters.allow_nonfinite_weights, {}, context=True),
    "to_lora": Spec(
        adapters.to_lora,
        {"model": adapted, "path": lambda: tempfile.mkdtemp(), "adapter_name": lambda: "default"},
    ),
    "add_adapter": Spec(
        adapters.add_adapter,
        {
            "model": adapted,
            "adapter_name": lambda: "second",
            "config": lambda: adapters.MoReConfig(target_modules=["query"], rank=1),
        },
    ),
    "active_adapter": Spec(adapters.active_adapter, {"model": adapted}),
    "list_adapters": Spec(adapters.list_adapters, {"model": adapted}),
    "more_layers": Spec(adapters.more_layers, {"model": adapted}),
    "count_parameters": Spec(adapters.count_parameters, {"model": adapted}),
    "print_trainable_parameters": Spec(adapters.print_trainable_parameters, {"model": adapted}),
    "get_adapter_parameters": Spec(
        adapters.get_adapter_parameters, {"model": adapted, "adapter_name": lambda: "default"}
    ),
    "set_adapter": Spec(adapters.set_adapter, {"model": adapted, "adapter_name": lambda: "default"}),
    "delete_adapter": Spec(adapters.delete_adapter, {"model": adapted, "adapter_name": lambda: "default"}),
    "merge": Spec(adapters.merge, {"model": adapted, "safe_merge": lambda: True}),
    "unmerge": Spec(adapters.unmerge, {"model": adapted}),
    "unload": Spec(adapters.unload, {"model": adapted}),
    "merge_and_unload": Spec(adapters.merge_and_unload, {"model": adapted, "safe_merge": lambda: False}),
    "disable_adapter": Spec(adapters.disable_adapter, {"model": adapted}, context=True),
    "save_adapter": Spec(
        adapters.save_adapter,
        {
            "model": adapted,
            "path": lambda: tempfile.mkdtemp(prefix="structmat-bad-inputs-"),
            "adapter_name": lambda: None,
        },
    ),
    "read_adapter_config": Spec(adapters.read_adapter_config, {"path": saved_adapter_dir}),
    "load_adapter": Spec(
        adapters.load_adapter, {"model": tiny_bert, "path": saved_adapter_dir, "adapter_name": lambda: "default"}
    ),
    "load_adapters": Spec(adapters.load_adapters, {"model": tiny_bert, "path": saved_adapter_dir}),
    "from_pretrained": Spec(adapters.from_pretrained, {"path": saved_adapter_dir}, skip_args=("path",)),
    "MonarchLinear": Spec(
        adapters.MonarchLinear, {"monarch": lambda: structmat.Monarch(8, 8, 2, 1), "bias": lambda: torch.zeros(8)}
    ),
    "replace_with_monarch": Spec(
        adapters.replace_with_monarch,
        {"model": tiny_bert, "target_modules": lambda: ["query"], "nblocks": lambda: 4, "rank": lambda: 1}
        | {"train_bias": lambda: False},
        names=("in_features", "out_features", "target"),
    ),
    "import_reference_checkpoint": Spec(
        adapters.import_reference_checkpoint,
        {"model": tiny_bert, "path": reference_checkpoint_file, "dropout": lambda: 0.0},
        names=("checkpoint", "model"),
    ),
    # new structures and the transform table
    "MonarchShape": Spec(
        structmat.MonarchShape.from_factor_shapes,
        {"blkdiag1_shape": lambda: (4, 2, 3), "blkdiag2_shape": lambda: (2, 5, 4)},
        names=("k", "q", "p", "l", "s", "r", "in_features", "out_features", "factor"),
    ),
    "dft_monarch": Spec(structmat.dft_monarch, {"n": lambda: 16, "normalized": lambda: False}),
    "transform_suite": Spec(analysis.transform_suite, {"n": lambda: 16, "seed": lambda: 0}),
    "recovery_table": Spec(
        analysis.recovery_table,
        {"n": lambda: 8, "targets": lambda: ["hadamard"], "threshold": lambda: 1e-4, "steps": lambda: 5}
        | {"progress": lambda: False},
    ),
    "recovery_markdown": Spec(analysis.recovery_markdown, {"rows": _recovery_rows}),
    "compare_errors": Spec(analysis.compare_errors, {"a": lambda: 0.5, "b": lambda: 0.6, "margin": lambda: 0.01}),
    "winners": Spec(analysis.winners, {"errors": lambda: {"x": 0.5, "y": 0.6}, "margin": lambda: 0.01}),
    "plot_curve_grid": Spec(
        analysis.plot_curve_grid, {"curves": lambda: {"t": _curve()}, "ncols": lambda: 2}, check_figure
    ),
    # constants: nothing to call with bad input
    "EXACT_ERROR": Spec(lambda: analysis.EXACT_ERROR, {}),
    "TIE_MARGIN": Spec(lambda: analysis.TIE_MARGIN, {}),
    "STYLE": Spec(lambda: analysis.STYLE, {}),
    "RecoveryRow": Spec(lambda rows: analysis.recovery_markdown(rows), {"rows": _recovery_rows}),
}
# from_pretrained's only argument is a folder whose base model it loads: its bad values are the
# path ones read_adapter_config and load_adapter already get.

PUBLIC = {
    *structmat.__all__,
    *analysis.__all__,
    *adapters.__all__,
}


def test_every_public_name_has_a_spec():
    assert set(SPECS) == PUBLIC


def _call(spec: Spec, kwargs: dict):
    if spec.context:
        with spec.fn(**kwargs) as value:
            return value
    return spec.fn(**kwargs)


PATH_ARGS = ("path",)


@pytest.mark.parametrize("name", sorted(SPECS))
@settings(max_examples=6, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_bad_input_gives_a_named_error_or_a_correct_result(name, data, capsys):
    spec = SPECS[name]
    args = [a for a in spec.args if a not in spec.skip_args]
    if not args:
        return
    arg = data.draw(st.sampled_from(args), label="argument")
    bad = data.draw(bad_values, label="bad value")
    kwargs = {k: (bad if k == arg else make()) for k, make in spec.args.items()}
    try:
        with contextlib.chdir(tempfile.mkdtemp(prefix="structmat-bad-inputs-")):  # "abc" as a path lands here
            result = _call(spec, kwargs)
    except (ValueError, TypeError) as err:
        message = str(err)
        named = [arg, *spec.args, *spec.names]
        assert any(n in message for n in named), f"{type(err).__name__} does not name {arg!r}: {message}"
        return
    except FileNotFoundError as err:  # a path that does not exist: the path is in the message
        assert arg in PATH_ARGS and str(bad) in str(err), err
        return
    finite_inputs = all(
        bool(torch.isfinite(v).all()) for v in kwargs.values() if isinstance(v, torch.Tensor) and not v.is_meta
    )
    if finite_inputs:  # NaN or inf in, NaN out is IEEE arithmetic (as nn.Linear); otherwise never NaN
        for item in result if isinstance(result, (tuple, list)) else [result]:
            _assert_no_nan(item)
    if spec.check is not None:
        spec.check(result, kwargs)


# -- the command line -----------------------------------------------------------------------

NOT_INTEGERS = st.sampled_from(["abc", "", "1.5", "nan", "1e3x", "--"])
CLI_BAD = {
    ("finetune", "--rank"): st.one_of(st.integers(-5, 0).map(str), NOT_INTEGERS, st.just("100000")),
    ("finetune", "--nblocks"): st.one_of(st.integers(-5, 0).map(str), NOT_INTEGERS, st.just("1000")),
    ("finetune", "--batch-size"): st.one_of(st.integers(-5, 0).map(str), NOT_INTEGERS),
    ("finetune", "--epochs"): st.one_of(st.integers(-5, 0).map(str), NOT_INTEGERS),
    ("finetune", "--train-size"): st.one_of(st.integers(-5, 0).map(str), NOT_INTEGERS),
    ("finetune", "--test-size"): st.one_of(st.integers(-5, 0).map(str), NOT_INTEGERS),
    ("finetune", "--max-length"): st.one_of(st.integers(-5, 0).map(str), NOT_INTEGERS, st.just("100000")),
    ("finetune", "--seed"): st.one_of(st.integers(-5, -1).map(str), NOT_INTEGERS),
    ("finetune", "--lr"): st.sampled_from(["-1", "0", "nan", "inf", "-inf", "abc", ""]),
    ("finetune", "--model-dropout"): st.sampled_from(["-0.1", "1", "1.5", "nan", "abc"]),
    ("finetune", "--model"): st.sampled_from(["bert", "", "MINILM"]),
    ("finetune", "--method"): st.sampled_from(["peft", ""]),
    ("finetune", "--task"): st.sampled_from(["bigbench:arithmetic", "nope", ""]),
    ("finetune", "--targets"): st.sampled_from([",", "query,,value", " , ", ""]),
    ("finetune", "--out"): st.sampled_from(["/proc/nope/r.json", "."]),
    ("finetune", "--save-adapter"): st.sampled_from(["/proc/nope/adapter", "/dev/null"]),
    ("demo", "--size"): st.one_of(st.integers(-5, 15).map(str), NOT_INTEGERS),
    ("demo", "--seed"): st.one_of(st.integers(-5, -1).map(str), NOT_INTEGERS),
    ("report", "--out"): st.sampled_from(["/dev/null", "/proc/nope/report"]),
}
if not torch.cuda.is_available():
    CLI_BAD[("finetune", "--device")] = st.sampled_from(["cuda", "tpu", ""])


@pytest.mark.parametrize("command,option", list(CLI_BAD), ids=[" ".join(k) for k in CLI_BAD])
@settings(max_examples=4, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_cli_bad_option_is_an_argparse_error(command, option, data, capsys, monkeypatch):
    from structmat.experiments import cli

    def no_work(args):  # nothing may run: the error comes from the parser
        raise AssertionError(f"{command} ran with {option}")

    for name in ("_finetune", "_demo", "_report"):
        monkeypatch.setattr(cli, name, no_work)
    value = data.draw(CLI_BAD[(command, option)], label="value")
    with pytest.raises(SystemExit) as exit_info:
        cli.main([command, f"{option}={value}"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert option in err and "Traceback" not in err, err


def test_cli_error_in_a_subprocess_has_no_traceback():
    run = subprocess.run(
        [sys.executable, "-m", "structmat.experiments", "finetune", "--batch-size", "0"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert run.returncode == 2
    assert "--batch-size" in run.stderr and "Traceback" not in run.stderr
