"""The target suite: matrices with known structure (transforms, convolution, low rank, random)."""

from __future__ import annotations

import math

import numpy as np
import scipy.linalg
import torch


def gaussian(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, n, generator=g, dtype=torch.float64) / math.sqrt(n)


def low_rank_plus_noise(n: int, rank: int = 8, noise: float = 0.05, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    low = torch.randn(n, rank, generator=g, dtype=torch.float64) @ torch.randn(
        rank, n, generator=g, dtype=torch.float64
    )
    low = low / torch.linalg.matrix_norm(low)
    e = torch.randn(n, n, generator=g, dtype=torch.float64)
    return low + noise * e / torch.linalg.matrix_norm(e)


def hadamard(n: int) -> torch.Tensor:
    return torch.from_numpy(scipy.linalg.hadamard(n).astype(np.float64)) / math.sqrt(n)


def dft_real(n: int) -> torch.Tensor:
    """Real ``n x n`` embedding ``[[Re F, -Im F], [Im F, Re F]]`` of the unitary DFT of size n/2."""
    m = n // 2
    F = torch.fft.fft(torch.eye(m, dtype=torch.complex128), dim=0, norm="ortho")
    return torch.cat([torch.cat([F.real, -F.imag], 1), torch.cat([F.imag, F.real], 1)], 0)


def toeplitz_conv(n: int, width: int = 16, seed: int = 0) -> torch.Tensor:
    """A 1-D convolution (Toeplitz) with a random decaying kernel of ``width`` taps."""
    rng = np.random.default_rng(seed)
    kernel = rng.standard_normal(width) * np.exp(-np.arange(width) / 4)
    col = np.zeros(n)
    col[:width] = kernel
    row = np.zeros(n)
    row[0] = kernel[0]
    return torch.from_numpy(scipy.linalg.toeplitz(col, row))


def target_suite(n: int = 256) -> dict[str, torch.Tensor]:
    """Name -> target matrix (float64): matrices with known structure, ``n x n``. ``n`` must be a
    power of two (Hadamard) and at least 16 (the convolution's kernel has 16 taps). Real pretrained
    weights: ``structmat.experiments.models.minilm_weight_matrices``."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 16 or n & (n - 1):
        raise ValueError(f"n must be a power of two >= 16, got {n!r}")
    suite = {
        "Gaussian random": gaussian(n),
        "low rank 8 + 5% noise": low_rank_plus_noise(n),
        "Walsh-Hadamard": hadamard(n),
        "DFT (real embedding)": dft_real(n),
        "Toeplitz convolution": toeplitz_conv(n),
    }
    return suite
