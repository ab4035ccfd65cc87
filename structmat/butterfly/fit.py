"""``fit_butterfly``: gradient-based butterfly approximation (no closed form exists)."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from ..approximation import normalized, relative_error, seeded
from ..checks import check_bool, check_matrix, check_nonnegative_int, check_positive_float, check_positive_int
from .module import Butterfly


def fit_butterfly(
    W: torch.Tensor,
    *,
    complex: bool | None = None,
    bit_reversal: bool = False,
    increasing_stride: bool = True,
    restarts: int = 4,
    steps: int = 1500,
    lr: float = 0.05,
    lbfgs_steps: int = 300,
    tol: float | None = None,
    seed: int | None = 0,
    progress: bool | None = None,
) -> Butterfly:
    """Fit a butterfly ``M`` to ``W`` (``(..., out, in)``) by minimising ``||W - M||_F^2``.

    ``restarts`` random orthogonal starts per matrix run side by side as one batched
    butterfly: Adam for up to ``steps`` steps (cosine-decayed ``lr``), then L-BFGS for up to
    ``lbfgs_steps`` iterations; both stop early once every matrix's relative error is below
    ``tol`` (default ``100 * eps`` of the working dtype, float32 for half ``W``: 1.2e-5 in
    float32, 2.2e-14 in float64). The best restart per matrix is returned, on ``W``'s device and
    dtype. The fit runs on ``W / max|W|``: its relative error does not depend on the scale of ``W``.

    Args:
        complex: complex twiddles; default: ``W.is_complex()``. The DFT needs
            ``complex=True, bit_reversal=True``.
        bit_reversal, increasing_stride: the fixed structure, see :class:`Butterfly`.
        progress: show a progress bar (default: when attached to a terminal).

    Returns:
        :class:`Butterfly` with ``batch_shape = W.shape[:-2]`` whose ``fit_error`` is the
        achieved relative error (not an estimate: measured on the returned matrix) and
        ``fit_info`` (steps taken, per-restart errors).
    """
    check_matrix("W", W, allow_complex=True)
    check_positive_int("restarts", restarts)
    check_positive_int("steps", steps)
    check_nonnegative_int("lbfgs_steps", lbfgs_steps)
    check_positive_float("lr", lr)
    check_bool("progress", progress, allow_none=True)
    check_bool("complex", complex, allow_none=True)
    W_in, (W, w_scale) = W, normalized(W)  # fit W / max|W| (float32 for half W): the same at any scale
    complex = W.is_complex() if complex is None else complex
    tol = 100 * torch.finfo(W.real.dtype).eps if tol is None else tol
    if W.is_complex() and not complex:
        raise ValueError("W is complex: fit it with complex=True")
    batch, (out_f, in_f) = W.shape[:-2], W.shape[-2:]
    with seeded(seed, W.device):  # the global RNG is left alone
        bf = Butterfly(
            in_f,
            out_f,
            complex=complex,
            bit_reversal=bit_reversal,
            increasing_stride=increasing_stride,
            init="ortho",
            batch_shape=(*batch, restarts),
            device=W.device,
            dtype=W.real.dtype,
        )
    target = W.detach().unsqueeze(-3)  # (*batch, 1, out, in)
    scale = torch.linalg.matrix_norm(target).square().clamp_min(1.0)  # >= 1 unless W = 0 (W / max|W| above)

    def losses() -> torch.Tensor:  # (*batch, restarts) relative squared errors
        return torch.linalg.matrix_norm(target - bf.to_dense()).square() / scale

    opt = torch.optim.Adam(bf.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    bar = tqdm(total=steps + lbfgs_steps, desc="fit_butterfly", disable=_disable(progress), leave=False)
    taken = 0
    for _ in range(steps):
        opt.zero_grad()
        loss = losses()
        best = loss.detach().amin(-1)
        if bool((best.sqrt() < tol).all()):
            break
        loss.sum().backward()
        opt.step()
        sched.step()
        taken += 1
        bar.update()
        bar.set_postfix(rel_err=f"{best.sqrt().max().item():.2e}", refresh=False)
    if lbfgs_steps:
        lbfgs = torch.optim.LBFGS(
            bf.parameters(),
            lr=1.0,
            max_iter=lbfgs_steps,
            tolerance_grad=1e-12,
            tolerance_change=1e-16,
            history_size=50,
            line_search_fn="strong_wolfe",
        )

        def closure() -> torch.Tensor:
            lbfgs.zero_grad()
            loss = losses().sum()
            loss.backward()
            bar.update()
            return loss

        if not bool((losses().detach().amin(-1).sqrt() < tol).all()):
            lbfgs.step(closure)
    bar.close()

    with torch.no_grad():
        per_restart = relative_error(target, bf.to_dense())  # (*batch, restarts)
        best = per_restart.argmin(-1)  # (*batch,)
        tw = bf.twiddle.detach()  # (*batch, restarts, m, n/2, 2, 2)
        idx = best.reshape(*batch, 1, 1, 1, 1, 1).expand(*batch, 1, *tw.shape[-4:])
        best_tw = tw.gather(len(batch), idx).squeeze(len(batch))
    result = Butterfly(
        in_f,
        out_f,
        complex=complex,
        bit_reversal=bit_reversal,
        increasing_stride=increasing_stride,
        init="identity",
        batch_shape=batch,
        device=W.device,
        dtype=W_in.real.dtype,
    )
    with torch.no_grad():  # scale back: each of the m factors takes scale^(1/m) (0 for a zero W: M = 0 exactly)
        w_scale = w_scale * W_in.detach().abs().amax(dim=(-2, -1), keepdim=True).gt(0)
        result.twiddle.copy_(best_tw * w_scale.reshape(*batch, 1, 1, 1, 1).pow(1.0 / best_tw.shape[-4]))
        result.fit_error = relative_error(W_in, result.to_dense())
    result.fit_info = {"adam_steps": taken, "restart_errors": per_restart}
    return result


def _disable(progress: bool | None) -> bool | None:
    return None if progress is None else not progress
