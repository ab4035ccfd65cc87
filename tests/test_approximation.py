"""The shared error helpers: accurate in float32, and the same when M comes part by part."""

import torch

from structmat.approximation import frobenius_norm2, relative_error, relative_error_in_parts


def test_float32_norms_are_summed_accurately():
    """torch's float32 norm of a 2048x2048 matrix is ~1e-4 off; the helpers sum in float64."""
    g = torch.Generator().manual_seed(0)
    W = torch.randn(2048, 2048, generator=g)
    M = W + 0.3 * torch.randn(2048, 2048, generator=g)
    W64, M64 = W.double(), M.double()
    want = (torch.linalg.matrix_norm(W64 - M64) / torch.linalg.matrix_norm(W64)).item()
    assert abs(relative_error(W, M).item() / want - 1) < 1e-6
    assert abs(frobenius_norm2(W).item() / W64.square().sum().item() - 1) < 1e-6


def test_parts_give_the_whole_error_and_the_zero_cases():
    g = torch.Generator().manual_seed(1)
    W = torch.randn(2, 30, 20, generator=g, dtype=torch.float64)
    M = torch.randn(2, 30, 20, generator=g, dtype=torch.float64)
    rows = [slice(0, 7), slice(7, 30)]
    parts = [(W[..., r, c], M[..., r, c].clone()) for r in rows for c in (slice(0, 11), slice(11, 20))]
    torch.testing.assert_close(relative_error_in_parts(W, parts), relative_error(W, M), rtol=1e-14, atol=0)
    Z = torch.zeros(5, 4)
    assert relative_error_in_parts(Z, [(Z, torch.zeros(5, 4))]).item() == 0.0
    assert relative_error_in_parts(Z, [(Z, torch.ones(5, 4))]).item() == float("inf")
