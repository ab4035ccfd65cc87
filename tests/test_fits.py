"""What every fit shares: dtype and device kept, W untouched, bad input refused, CUDA."""

import numpy as np
import pytest
import scipy.linalg
import torch

from structmat import fit_butterfly, fit_lowrank, fit_monarch, optimal_error


def test_fit_preserves_dtype_and_does_not_modify_W():
    W = torch.randn(24, 16)
    W_copy = W.clone()
    for fitted in (fit_monarch(W, 4, 2), fit_lowrank(W, 3), fit_lowrank(W, 3, method="randomized")):
        assert fitted.dtype == torch.float32 and fitted.device == W.device
    fit_butterfly(W, steps=5, lbfgs_steps=0, restarts=1)
    assert torch.equal(W, W_copy)


@pytest.mark.parametrize(
    "fit",
    [lambda W: fit_monarch(W, 4, 1), lambda W: fit_lowrank(W, 2), lambda W: fit_butterfly(W, steps=1)],
    ids=["monarch", "lowrank", "butterfly"],
)
def test_fit_bad_input(fit):
    with pytest.raises(ValueError, match="W contains NaN or inf"):
        fit(torch.tensor([[float("nan")] * 8] * 8))
    with pytest.raises(ValueError, match="W contains NaN or inf"):
        fit(torch.full((8, 8), float("inf")))
    with pytest.raises(ValueError, match="W must be a matrix"):
        fit(torch.randn(8))
    with pytest.raises(TypeError, match="W must have a floating-point"):
        fit(torch.ones(8, 8, dtype=torch.long))
    with pytest.raises(TypeError, match="W must be a torch.Tensor"):
        fit(np.ones((8, 8)))


def test_fit_bad_rank_and_nblocks():
    W = torch.randn(16, 12)
    with pytest.raises(ValueError, match="rank must be a positive integer"):
        fit_monarch(W, 4, 0)
    with pytest.raises(ValueError, match="rank must be a positive integer"):
        fit_lowrank(W, -1)
    with pytest.raises(ValueError, match="rank=13 is larger"):
        fit_lowrank(W, 13)
    with pytest.raises(ValueError, match="nblocks=7 does not fit"):
        fit_monarch(W, 7, 1)
    with pytest.raises(ValueError, match="nblocks='sqrt'"):
        fit_monarch(W, "sqrt")
    with pytest.raises(ValueError, match="method must be"):
        fit_monarch(W, 4, 1, method="qr")
    with pytest.raises(ValueError, match="structure must be"):
        optimal_error(W, "butterfly")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_fits_on_cuda():
    W = torch.randn(2, 256, 192, device="cuda")
    m = fit_monarch(W, 4, 4)
    assert m.device.type == "cuda" and m.fit_error.device.type == "cuda"
    cpu = fit_monarch(W.cpu().double(), 4, 4)
    torch.testing.assert_close(m.fit_error.cpu().double(), cpu.fit_error, rtol=1e-4, atol=1e-5)
    assert fit_lowrank(W, 8).device.type == "cuda"
    assert fit_lowrank(W, 8, method="randomized").device.type == "cuda"
    H = torch.tensor(scipy.linalg.hadamard(64), dtype=torch.float32, device="cuda")
    assert fit_butterfly(H, progress=False).fit_error.item() < 1e-4


def test_fit_error_is_declared_and_moves_with_the_module():
    from structmat import Butterfly, LowRank, Monarch

    for unfitted in (Monarch(8, 8, 2, 1), LowRank(8, 8, 2), Butterfly(8)):
        assert unfitted.fit_error is None and unfitted.fit_info is None
    fitted = fit_monarch(torch.randn(3, 8, 8), 2, 1)
    assert fitted.fit_error.shape == (3,)
    assert fitted.to(torch.float64).fit_error.dtype == torch.float64  # a buffer: .to() moves it
    assert "fit_error" not in fitted.state_dict()  # not part of the checkpoint
