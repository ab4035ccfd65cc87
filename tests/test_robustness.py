"""Issue 18: fits at any scale and dtype, one rule for ranks that add no capacity, and the named
errors the issue listed. References are numpy SVDs in float64 (independent of structmat's code)."""

import math
import warnings

import numpy as np
import pytest
import torch
from helpers import tiny_bert

import structmat as sm
from structmat import analysis
from structmat.adapters import MoReLinear, apply_more
from structmat.monarch import MonarchShape

SCALES = [1e-30, 1e-20, 1e-10, 1.0, 1e10, 1e20, 1e30]


def _W(out=16, inp=24, seed=0, batch=()):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*batch, out, inp, generator=g, dtype=torch.float64)


def _lowrank_optimum(W: torch.Tensor, rank: int) -> float:
    """Eckart-Young from numpy's SVD of the float64 matrix (no structmat code)."""
    sv = np.linalg.svd(W.double().numpy(), compute_uv=False)
    return float(np.sqrt((sv[rank:] ** 2).sum() / (sv**2).sum()))


FITS = {
    "fit_monarch svd": lambda W: sm.fit_monarch(W, 4, 2, method="svd").fit_error,
    "fit_monarch gram": lambda W: sm.fit_monarch(W, 4, 2, method="gram").fit_error,
    "fit_monarch randomized": lambda W: sm.fit_monarch(W, 4, 2, method="randomized").fit_error,
    "fit_lowrank svd": lambda W: sm.fit_lowrank(W, 3).fit_error,
    "fit_lowrank randomized": lambda W: sm.fit_lowrank(W, 3, method="randomized").fit_error,
    "optimal_error monarch": lambda W: sm.optimal_error(W, "monarch", nblocks=4, rank=2),
    "optimal_error lowrank": lambda W: sm.optimal_error(W, "lowrank", rank=3),
    "approximation_curve": lambda W: torch.tensor(
        [p.rel_error for p in analysis.approximation_curve(W, [100, 200], nblocks=(2, 4))]
    ),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("name", list(FITS))
def test_relative_errors_do_not_depend_on_the_scale(name, dtype):
    fit = FITS[name]
    W = _W()
    reference = fit(W.to(dtype)).double()
    assert bool(torch.isfinite(reference).all()) and bool((reference > 0.05).all())
    for c in SCALES:
        err = fit((W * c).to(dtype)).double()
        assert bool(torch.isfinite(err).all()), (c, err)
        torch.testing.assert_close(err, reference, rtol=1e-5, atol=0, msg=f"scale {c}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_lowrank_errors_match_numpy_at_extreme_scales(dtype):
    W = _W()
    want = _lowrank_optimum(W, 3)
    for c in (1e-30, 1e30):
        assert float(sm.fit_lowrank((W * c).to(dtype), 3).fit_error) == pytest.approx(want, rel=1e-5)
        assert float(sm.optimal_error((W * c).to(dtype), "lowrank", rank=3)) == pytest.approx(want, rel=1e-5)


def test_scaled_fit_is_the_scaled_fit():
    W = _W()
    for c in (1e-30, 1e30):
        m = sm.fit_monarch((W * c).float(), 4, 2)
        torch.testing.assert_close(m.to_dense().double() / c, sm.fit_monarch(W, 4, 2).to_dense(), rtol=1e-4, atol=1e-4)


def test_zero_W_gives_zero_errors():
    Z = torch.zeros(16, 24)
    assert float(sm.fit_monarch(Z).fit_error) == 0.0 and float(sm.optimal_error(Z, "monarch")) == 0.0
    assert float(sm.fit_lowrank(Z, 2).fit_error) == 0.0 and float(sm.optimal_error(Z, "lowrank", rank=2)) == 0.0
    assert float(sm.fit_monarch(Z, method="gram").fit_error) == 0.0
    assert not sm.fit_monarch(Z).to_dense().any()


def test_stacked_fits_normalise_each_matrix():
    W = _W(batch=(3,))
    W = W * torch.tensor([1e-20, 1.0, 1e20], dtype=torch.float64).reshape(3, 1, 1)
    err = sm.fit_lowrank(W.float(), 3).fit_error
    want = torch.tensor([_lowrank_optimum(W[i], 3) for i in range(3)], dtype=torch.float64)
    torch.testing.assert_close(err.double(), want, rtol=1e-5, atol=0)


def test_butterfly_converges_to_the_same_error_at_any_scale():
    W = _W(8, 8)
    kw = {"steps": 150, "lbfgs_steps": 20, "restarts": 2, "progress": False}
    base = float(sm.fit_butterfly(W, **kw).fit_error)
    for c in (1e-12, 1e-30):
        fitted = sm.fit_butterfly(W * c, **kw)
        assert float(fitted.fit_error) == pytest.approx(base, rel=1e-6)
        assert bool(torch.isfinite(fitted.twiddle).all())
        # the reported error is the error of the returned matrix, at W's scale
        true = torch.linalg.matrix_norm(W * c - fitted.to_dense().detach()) / torch.linalg.matrix_norm(W * c)
        assert float(true) == pytest.approx(base, rel=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
def test_half_precision_in_every_fit_and_analysis_function(dtype):
    W = _W()
    Wh = W.to(dtype)
    want = _lowrank_optimum(Wh.double(), 3)  # the optimum of the matrix actually given
    tol = 2e-2 if dtype == torch.bfloat16 else 2e-3
    for fitted in (sm.fit_lowrank(Wh, 3), sm.fit_lowrank(Wh, 3, method="randomized")):
        assert fitted.A.dtype == dtype and fitted.fit_error.dtype == dtype
        assert float(fitted.fit_error) == pytest.approx(want, abs=tol)
        true = torch.linalg.matrix_norm(Wh.double() - fitted.to_dense().detach().double()) / torch.linalg.matrix_norm(
            Wh.double()
        )
        assert float(fitted.fit_error) == pytest.approx(float(true), abs=tol)  # measured on what is returned
    m = sm.fit_monarch(Wh, 4, 2)
    assert m.blkdiag1.dtype == dtype and m.fit_error.dtype == dtype
    opt = sm.optimal_error(W, "monarch", nblocks=4, rank=2)
    assert float(m.fit_error) == pytest.approx(float(opt), abs=tol)
    assert float(sm.optimal_error(Wh, "monarch", nblocks=4, rank=2)) == pytest.approx(float(opt), abs=tol)
    bf = sm.fit_butterfly(_W(8, 8).to(dtype), steps=50, lbfgs_steps=0, restarts=1, progress=False)
    assert bf.twiddle.dtype == dtype and bool(torch.isfinite(bf.fit_error))
    sv = analysis.singular_values(Wh)
    assert sv.dtype == dtype
    np.testing.assert_allclose(
        sv.double().numpy(),
        np.linalg.svd(Wh.double().numpy(), compute_uv=False) / np.linalg.norm(Wh.double(), 2),
        atol=tol,
    )
    assert analysis.effective_rank(Wh).dtype == dtype and analysis.stable_rank(Wh).dtype == dtype
    assert int(analysis.numerical_rank(Wh)) == 16
    assert analysis.principal_angles(Wh[:, :3], Wh[:, 1:4]).dtype == dtype
    res = analysis.delta_analysis(Wh[:, :16], Wh[:, 8:24], k=2)
    assert res.singular_values.dtype == dtype and math.isfinite(res.amplification)
    points = analysis.approximation_curve(Wh, [200], nblocks=(4,))
    assert all(math.isfinite(p.rel_error) for p in points)


# -- one rule for ranks that add no capacity ------------------------------------------------


def _saturating_rank_by_brute_force(in_f: int, out_f: int, nblocks: int) -> int:
    """The smallest rank whose Monarch blocks are all saturated, from the block-rank bookkeeping."""
    for rank in range(1, 4 * max(in_f, out_f)):
        p, s = -(-in_f // nblocks), -(-out_f // nblocks)
        st = MonarchShape(nblocks, rank, p, nblocks, s, rank, in_f, out_f)
        if (st.block_ranks >= np.minimum(st.real_rows[:, None], st.real_cols[None, :])).all():
            return rank
    raise AssertionError


@pytest.mark.parametrize("shape", [(16, 24, 4), (10, 10, 4), (13, 13, 4), (64, 64, 4), (30, 21, 4), (7, 9, 1)])
def test_largest_useful_rank_is_the_saturation_rank(shape):
    in_f, out_f, n = shape
    largest = MonarchShape.largest_useful_rank(in_f, out_f, n)
    assert largest == _saturating_rank_by_brute_force(in_f, out_f, n)
    if in_f % n == 0 and out_f % n == 0:
        assert largest == min(in_f, out_f)
    # at the largest useful rank every matrix is reached exactly; one rank less does not reach all
    W = _W(out_f, in_f, seed=3)
    assert float(sm.fit_monarch(W, n, largest).fit_error) < 1e-12
    assert float(sm.optimal_error(W, "monarch", nblocks=n, rank=largest - 1)) > 1e-3 if largest > 1 else True


def test_padded_monarch_may_use_a_rank_above_min_size():
    # Monarch(10, 10, nblocks=4) pads to 12: ranks 11 and 12 add capacity, 13 does not
    W = _W(10, 10, seed=4)
    assert float(sm.optimal_error(W, "monarch", nblocks=4, rank=11)) > 1e-3
    assert float(sm.fit_monarch(W, 4, 12).fit_error) < 1e-12
    with pytest.raises(ValueError, match="largest useful rank 12"):
        sm.fit_monarch(W, 4, 13)


USELESS_RANK = {
    "fit_monarch": lambda: sm.fit_monarch(_W(16, 24), 4, 17),
    "fit_lowrank": lambda: sm.fit_lowrank(_W(16, 24), 17),
    "fit_lowrank randomized": lambda: sm.fit_lowrank(_W(16, 24), 17, method="randomized"),
    "optimal_error monarch": lambda: sm.optimal_error(_W(16, 24), "monarch", nblocks=4, rank=17),
    "optimal_error lowrank": lambda: sm.optimal_error(_W(16, 24), "lowrank", rank=17),
    "Monarch": lambda: sm.Monarch(24, 16, 4, 17),
    "LowRank": lambda: sm.LowRank(24, 16, 17),
    "apply_more": lambda: apply_more(tiny_bert(), target_modules=["query"], nblocks=4, rank=33),
}


@pytest.mark.parametrize("name", list(USELESS_RANK))
def test_one_rule_for_ranks_that_add_no_capacity(name):
    with pytest.raises(ValueError, match=r"rank=\d+ is larger than the largest useful rank (16|32)"):
        USELESS_RANK[name]()


def test_apply_more_warns_when_the_update_outgrows_the_layer():
    with pytest.warns(UserWarning, match="more parameters than the dense weight"):
        apply_more(tiny_bert(), target_modules=["query"], nblocks=4, rank=20)  # 20 * 64 > 32 * 32
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        apply_more(tiny_bert(), target_modules=["query"], nblocks=4, rank=16)  # 16 * 64 == 32 * 32


# -- named errors ---------------------------------------------------------------------------


def test_errors_the_issue_listed():
    with pytest.raises(TypeError, match="x must have the module's dtype"):
        sm.Monarch(24, 16)(torch.randn(3, 24, dtype=torch.float64))
    for build in (lambda: sm.Monarch(8, 8, 2, 1, batch_shape=(-1,)), lambda: sm.LowRank(8, 8, 2, batch_shape=(2, 0))):
        with pytest.raises(ValueError, match="batch_shape must be a tuple of positive integers"):
            build()
    meta = torch.empty(16, 24, device="meta")
    for fit in (sm.fit_monarch, lambda W: sm.fit_lowrank(W, 2), sm.fit_butterfly):
        with pytest.raises(ValueError, match="W is a meta tensor"):
            fit(meta)
    for op in (sm.Butterfly(8), sm.Monarch(8, 8, 2, 1), sm.LowRank(8, 8, 2)):
        with pytest.raises(ValueError, match="x must be on the module's device cpu, got meta"):
            op(torch.empty(2, 8, device="meta"))
    with pytest.raises(ValueError, match="oversample must be an integer >= 0, got -20"):
        sm.fit_lowrank(_W(), 2, method="randomized", oversample=-20)
    with pytest.raises(ValueError, match="niter must be an integer >= 0, got -1"):
        sm.fit_lowrank(_W(), 2, method="randomized", niter=-1)
    with pytest.raises(ValueError, match="target_modules='query\\[' is not a valid regular expression"):
        apply_more(tiny_bert(), target_modules="query[")
    with pytest.raises(TypeError, match="target_modules must be"):
        apply_more(tiny_bert(), target_modules=5)
    for layer in (torch.nn.Conv2d(4, 4, 3), torch.nn.Bilinear(4, 4, 4), torch.nn.Embedding(10, 8)):
        with pytest.raises(TypeError, match="base_layer must be an nn.Linear or a transformers Conv1D"):
            MoReLinear(layer, nblocks=2, rank=1)
    with pytest.raises(ValueError, match="n must be a power of two >= 16, got 8"):
        analysis.target_suite(8)
    for spectra in ({"a": torch.tensor([])}, {"a": torch.randn(3, 3)}, {}):
        with pytest.raises(ValueError, match="spectra"):
            analysis.plot_spectra(spectra)


@pytest.mark.parametrize("structure", ["monarch", "lowrank", "butterfly"])
def test_size_one_batch_dims_broadcast_like_lowrank(structure):
    W = _W(16, 16, batch=(2, 3)).float()
    fitted = {
        "monarch": lambda: sm.fit_monarch(W),
        "lowrank": lambda: sm.fit_lowrank(W, 2),
        "butterfly": lambda: sm.fit_butterfly(W, steps=2, lbfgs_steps=0, restarts=1, progress=False),
    }[structure]()
    x = torch.randn(1, 3, 5, 16)
    dense = fitted.to_dense()  # (2, 3, 16, 16)
    torch.testing.assert_close(fitted(x), x.expand(2, 3, 5, 16) @ dense.mT, rtol=1e-4, atol=1e-4)


def test_malformed_adapter_config_names_the_file(tmp_path):
    from structmat.adapters import read_adapter_config

    for name, content in [("json", b"{bad"), ("binary", b"\xff\xfe\x00"), ("types", b'{"nblocks": "x"}')]:
        folder = tmp_path / name
        folder.mkdir()
        (folder / "adapter_config.json").write_bytes(content)
        with pytest.raises(ValueError, match=str(folder / "adapter_config.json")):
            read_adapter_config(folder)


def test_principal_angles_only_for_directions_that_exist():
    g = torch.Generator().manual_seed(0)
    A = torch.randn(10, 3, generator=g, dtype=torch.float64)
    A[:, 2] = A[:, 0] + A[:, 1]  # spans 2 directions
    B = torch.randn(10, 3, generator=g, dtype=torch.float64)
    angles = analysis.principal_angles(A, B)
    assert angles.shape == (2,)
    # reference: scipy on an explicit orthonormal basis of A's span
    import scipy.linalg

    want = np.sort(scipy.linalg.subspace_angles(A[:, :2].numpy(), B.numpy()))
    np.testing.assert_allclose(angles.numpy(), want, atol=1e-10)
    assert analysis.principal_angles(torch.zeros(10, 2), B.float()).shape == (0,)
