"""``fit_butterfly``: find a butterfly structure (permutations included) for a dense matrix.

Phases, each stopping as soon as the relative error is below ``tol``:

1. **Closed form over the permutation family** (square power-of-two ``W``): for ``nblocks = 1``
   (``P_out B P_in``) and ``nblocks = 2`` (``P_out B B* P_in``, the kaleidoscope product), and for
   ``W`` and ``W^T``, :func:`.factorize.search` peels the factors level by level and picks the
   permutations of the family of Dao et al. 2019 (:mod:`.permutation`): first the 64 choices
   that repeat one choice at every level, then a level-by-level search over the whole family.
   What it returns is checked by multiplying the factors out. This recovers the DFT, DCT-II,
   DST-II, circulant convolutions and Hadamard to rounding error in seconds.
2. **Near miss**: when no structure is exact but peeling (with a loose bar) gives factors within
   60% error (``W`` = a transform + noise), L-BFGS polishes those factors, permutations fixed.
3. **Gradient** otherwise: ``restarts`` random orthogonal starts as one batch, Adam (cosine
   learning rate) until ``tol``, a stall (no 1% gain in ``patience`` steps) or the step budget,
   then L-BFGS with the same stopping rules. With ``relax=True`` the permutations are learned
   here too, relaxed (:class:`.permutation.RelaxedPermutation`; half of the restarts start at the
   identity, where the saturated sigmoid keeps them) and rounded to exact ones before L-BFGS.

The returned module is a product of butterflies and index permutations (no dense matrix), and
its ``fit_error`` is measured on it. ``fit_info`` says what happened (``recovered``, ``phase``,
``stopped``, steps taken, the structures tried).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch

from ..approximation import normalized, relative_error, seeded
from ..checks import check_bool, check_matrix, check_nonnegative_int, check_positive_float, check_positive_int
from ..progress import tqdm
from . import factorize
from .module import Butterfly, next_power_of_two
from .permutation import permutation_from_choices

_DEFAULT_TOL = {torch.float64: 1e-10, torch.float32: 1e-5}


@dataclass(frozen=True)
class ButterflyFitOptions:
    """The settings of :func:`fit_butterfly` (its keyword arguments, documented there), checked
    once; the phases read them from here instead of taking each as an argument."""

    nblocks: int | None = None
    learn_perm: bool = True
    relax: bool = False
    complex: bool | None = None
    bit_reversal: bool = False
    increasing_stride: bool = True
    restarts: int = 4
    steps: int = 1500
    lr: float = 0.05
    lbfgs_steps: int = 300
    tol: float | None = None
    patience: int = 100
    max_time: float | None = None
    closed_form: bool = True
    seed: int | None = 0
    progress: bool | None = None

    def __post_init__(self) -> None:
        check_positive_int("restarts", self.restarts)
        check_positive_int("steps", self.steps)
        check_positive_int("patience", self.patience)
        check_nonnegative_int("lbfgs_steps", self.lbfgs_steps)
        check_positive_float("lr", self.lr)
        check_bool("progress", self.progress, allow_none=True)
        check_bool("complex", self.complex, allow_none=True)
        if self.nblocks is not None:
            check_positive_int("nblocks", self.nblocks)
        if self.max_time is not None and not self.max_time > 0:
            raise ValueError(f"max_time must be positive seconds, got {self.max_time}")
        if self.tol is not None:
            check_positive_float("tol", self.tol)


@dataclass
class _Run:
    """One fit in progress: its options, the tolerance for W's dtype, the deadline, the progress
    bar and the ``fit_info`` being filled."""

    options: ButterflyFitOptions
    tol: float
    deadline: float | None
    bar: tqdm
    info: dict = field(default_factory=dict)


def fit_butterfly(
    W: torch.Tensor,
    *,
    nblocks: int | None = None,
    learn_perm: bool = True,
    relax: bool = False,
    complex: bool | None = None,
    bit_reversal: bool = False,
    increasing_stride: bool = True,
    restarts: int = 4,
    steps: int = 1500,
    lr: float = 0.05,
    lbfgs_steps: int = 300,
    tol: float | None = None,
    patience: int = 100,
    max_time: float | None = None,
    closed_form: bool = True,
    seed: int | None = 0,
    progress: bool | None = None,
) -> Butterfly:
    """Fit a butterfly ``M`` to ``W`` (``(..., out, in)``): ``min ||W - M||_F`` over the structure.

    Args:
        nblocks: butterfly blocks (1: ``B``; 2: the kaleidoscope ``B B*``). Default: the closed
            form tries 1, then 2, and the gradient phase fits 1.
        learn_perm: find the input and output permutations (closed-form search over the family,
            near-miss polish). ``False``: a fixed structure (``bit_reversal``, ``increasing_stride``),
            gradient phase only, as before the permutations were learnable.
        relax: the gradient phase also learns the permutations, relaxed (Dao et al.'s method:
            half the restarts relaxed, half at the identity; rounded before L-BFGS). Off by default:
            from random starts it recovered none of the DFT, DCT-II and a permuted Hadamard at
            n = 8..32 here, costs ~3x per step, and did not improve fits of unstructured matrices.
        complex: complex twiddles. Default: complex for a complex ``W``; for a real ``W`` real
            factors when they recover it, else complex factors with ``real_output=True`` (a real
            circulant is ``F^-1 diag(F c) F``). ``False``: real factors only; ``True``: complex.
        bit_reversal, increasing_stride: the fixed structure when ``learn_perm=False``.
        restarts: random starts of the gradient phase, run side by side as one batch.
        steps, lbfgs_steps: step budgets of Adam and of L-BFGS (iterations, not evaluations).
        lr: Adam's learning rate (cosine-decayed over ``steps``).
        tol: relative error at which a fit stops and counts as recovered; default ``1e-5``
            (float32), ``1e-10`` (float64).
        patience: a phase stops when its error has not improved by 1% in this many steps
            (L-BFGS: ``patience // 10`` iterations).
        max_time: seconds; every phase stops when it is spent.
        closed_form: try the closed form and the near-miss polish (need a square power-of-two ``W``
            and ``learn_perm``).
        progress: progress bar (default: shown, also when output is not a terminal; ``False``:
            hidden). Its total is the budget: closed-form structures + ``steps`` + ``lbfgs_steps``
            (+ ``lbfgs_steps`` when a near miss is polished); an early stop leaves it where the fit
            stopped, with the current error shown.

    Returns:
        :class:`Butterfly` with ``batch_shape = W.shape[:-2]``, on ``W``'s device and (real)
        dtype, whose ``fit_error`` is the achieved relative error (measured on the returned
        module) and ``fit_info`` a dict: ``recovered`` (fit_error <= tol for every matrix),
        ``phase`` ("closed form", "closed form + polish" or "gradient"), ``stopped`` ("tol",
        "stall", "steps", "time"), ``adam_steps``, ``lbfgs_steps``, ``steps_budget``,
        ``lbfgs_budget``, ``structure``, ``tried``, ``seconds``, ``restart_errors``, and
        ``near_miss_error`` when a near miss was polished.
    """
    check_matrix("W", W, allow_complex=True)
    opts = ButterflyFitOptions(
        nblocks=nblocks, learn_perm=learn_perm, relax=relax, complex=complex, bit_reversal=bit_reversal,
        increasing_stride=increasing_stride, restarts=restarts, steps=steps, lr=lr, lbfgs_steps=lbfgs_steps, tol=tol,
        patience=patience, max_time=max_time, closed_form=closed_form, seed=seed, progress=progress,
    )  # fmt: skip
    if opts.complex is False and W.is_complex():
        raise ValueError("W is complex: fit it with complex=True (or None)")
    W_in, (W, w_scale) = W, normalized(W)  # fit W / max|W| (float32 for half W): the same at any scale
    t0 = time.perf_counter()
    out_f, in_f = W.shape[-2:]
    n = next_power_of_two(max(in_f, out_f, 2))
    try_closed = opts.closed_form and opts.learn_perm and in_f == out_f == n
    # the 64 shared choices first (cheap), then the level-by-level search over the whole family
    structures = [
        (nb, tr, shared)
        for shared in (True, False)
        for nb in ((opts.nblocks,) if opts.nblocks else (1, 2))
        if nb <= 2
        for tr in (False, True)
    ]
    bar = tqdm(
        total=(len(structures) if try_closed else 0) + opts.steps + opts.lbfgs_steps,
        desc="fit_butterfly",
        unit="step",
        disable=opts.progress is False,
        leave=opts.progress is not False,
    )
    run = _Run(
        opts,
        tol=_DEFAULT_TOL.get(W.real.dtype, 1e-2) if opts.tol is None else float(opts.tol),
        deadline=None if opts.max_time is None else t0 + opts.max_time,
        bar=bar,
        info={
            "tried": [],
            "steps_budget": opts.steps,
            "lbfgs_budget": opts.lbfgs_steps,
            "adam_steps": 0,
            "lbfgs_steps": 0,
        },
    )
    info, tol = run.info, run.tol
    try:
        result, near = None, None
        if try_closed:
            result, near = _closed_form(W, structures, run)
        polished = None
        if result is None and near is not None and opts.lbfgs_steps:
            # phase 2, a near miss (W = a transform + a little noise): refine those factors first
            bar.total += opts.lbfgs_steps
            info["lbfgs_budget"] += opts.lbfgs_steps
            polished = _optimize(_polish_start(near), W, run, steps=0, label="polish")
            if float(relative_error(W, polished.to_dense().detach()).max()) <= _KEEP:
                result = polished
                info["phase"] = "closed form + polish"
        if result is None:
            result = _gradient(W, run)
            if polished is not None and _worse(result, polished, W):
                result = polished
                info["phase"] = "closed form + polish"
    finally:
        bar.close()
    with torch.no_grad():  # scale back: each factor takes scale^(1/factors) (a zero W: M = 0 exactly)
        w_scale = w_scale * W_in.detach().abs().amax(dim=(-2, -1), keepdim=True).gt(0)
        factors = result.twiddle.shape[-4]
        result.twiddle.mul_(w_scale.reshape(*W.shape[:-2], 1, 1, 1, 1).pow(1.0 / factors).to(result.twiddle.dtype))
        if result.twiddle.real.dtype != W_in.real.dtype:  # half W: the fit ran in float32
            result = result.to(W_in.real.dtype)
        result.fit_error = relative_error(W_in, result.to_dense())
    info["recovered"] = bool((result.fit_error <= tol).all())
    info["tol"] = tol
    info["seconds"] = time.perf_counter() - t0
    info["structure"] = {
        "nblocks": result.nblocks,
        "complex": result.is_complex,
        "real_output": result.real_output,
        "increasing_stride": result.increasing_stride,
        "num_params": result.num_params,
    }
    result.fit_info = info
    return result


# -- phase 1: closed form -----------------------------------------------------------------------
_NEAR = 0.6  # a near miss: the peeled factors of a non-exact W are within this error: polish them
_KEEP = 0.1  # a polished near miss within this error skips the random-start gradient phase


def _closed_form(W, structures, run: _Run) -> tuple[Butterfly | None, Butterfly | None]:
    """(an exact module or None, the best near-miss module or None)."""
    tol, deadline, bar, info = run.tol, run.deadline, run.bar, run.info
    eps = torch.finfo(W.real.dtype).eps
    exact_tol = max((tol / 10) ** 2, (1e3 * torch.finfo(torch.float64).eps) ** 2, (30 * eps) ** 2)
    targets = W.detach().reshape(-1, *W.shape[-2:]).to(torch.complex128)
    kinds = _kinds(W, run.options.complex)
    near, near_err = None, math.inf
    for nb, transposed, shared in structures:
        if deadline is not None and time.perf_counter() > deadline:
            info["stopped"] = "time"
            break
        name = f"nblocks={nb}" + (", transposed" if transposed else "") + ("" if shared else ", per-level search")
        for loose in (False, True) if shared else (False,):
            found = []
            for T in targets:
                bar_tol = _NEAR**2 if loose else exact_tol
                cand = factorize.search(T.mT if transposed else T, nb, shared=shared, exact_tol=bar_tol)
                if cand is None:
                    break
                found.append(cand)
            if len(found) < len(targets):
                continue
            module, err = _pick(W, found, nb, transposed, kinds, _NEAR if loose else tol)
            if module is None:
                continue
            if not loose:
                bar.update()
                info["tried"].append({"structure": name, "exact": True})
                bar.set_postfix_str(f"closed form {name}: rel_err={err:.1e}")
                info.update(phase="closed form", stopped="tol", restart_errors=None)
                return module, None
            if err < near_err:
                near, near_err = module, err
            break
        bar.update()
        info["tried"].append({"structure": name, "exact": False})
        bar.set_postfix_str(f"closed form {name}: not exact", refresh=False)
    if near is not None:
        info["near_miss_error"] = near_err
    return None, near


def _kinds(W: torch.Tensor, complex: bool | None) -> list[str]:
    """Factor kinds to accept, in order of preference."""
    if W.is_complex() or complex is True:
        return ["complex"]
    if complex is False:
        return ["real"]
    return ["real", "complex_real_output"]


def _pick(W, found, nb, transposed, kinds, tol) -> tuple[Butterfly | None, float]:
    """The first candidate per matrix of an acceptable kind whose product reaches ``tol``, and its error."""
    n = W.shape[-1]
    batch = W.shape[:-2]
    flat_W = W.detach().reshape(-1, n, n)
    for kind in kinds:
        chosen = []
        for T, cand in zip(flat_W, found, strict=True):
            tw, pin, pout, inc = _as_module_factors(cand, nb, transposed, n)
            if kind == "real":
                scale = tw.abs().amax((1, 2, 3, 4)).clamp_min(1e-300)
                ok = tw.imag.abs().amax((1, 2, 3, 4)) <= 1e-9 * scale
                tw = tw.real
            else:
                ok = torch.ones(tw.shape[0], dtype=torch.bool, device=tw.device)
            bf = Butterfly(
                n,
                nblocks=nb,
                increasing_stride=inc,
                complex=kind != "real",
                real_output=kind == "complex_real_output",
                in_perm=pin,
                out_perm=pout,
                init="identity",
                batch_shape=(tw.shape[0],),
                device=tw.device,
                dtype=torch.float64,
            )
            with torch.no_grad():
                bf.twiddle.copy_(tw)
                err = relative_error(T.to(bf.dtype).expand(tw.shape[0], n, n), bf.to_dense())
            err = torch.where(ok, err, torch.full_like(err, float("inf")))
            best = int(err.argmin())
            if not err[best] <= tol:
                break
            chosen.append((tw[best], pin[best], pout[best]))
        else:
            tws = torch.stack([c[0] for c in chosen]).reshape(*batch, *chosen[0][0].shape)
            pins = torch.stack([c[1] for c in chosen]).reshape(*batch, n)
            pouts = torch.stack([c[2] for c in chosen]).reshape(*batch, n)
            real_dtype = W.real.dtype
            bf = Butterfly(
                n,
                nblocks=nb,
                increasing_stride=inc,
                complex=kind != "real",
                real_output=kind == "complex_real_output",
                in_perm=pins if batch else pins.reshape(n),
                out_perm=pouts if batch else pouts.reshape(n),
                init="identity",
                batch_shape=tuple(batch),
                device=W.device,
                dtype=real_dtype,
            )
            with torch.no_grad():
                bf.twiddle.copy_(tws.to(bf.twiddle.dtype))
            err = float(relative_error(W, bf.to_dense().detach()).max())
            if err <= tol:
                return bf, err
    return None, math.inf


def _as_module_factors(cand: factorize.Candidate, nb: int, transposed: bool, n: int):
    """Search coordinates -> (twiddle, in_perm, out_perm, increasing_stride) of the module."""
    r = permutation_from_choices(n, cand.out_choices)  # K = T[r][:, c]
    c = permutation_from_choices(n, cand.in_choices)
    tw = cand.twiddle  # (E, nb * m, n/2, 2, 2): block 0 decreasing, block 1 increasing
    if not transposed:
        return tw, c, r.argsort(-1), False
    m = n.bit_length() - 1
    if nb == 1:  # T = P_c^T B_dec^T P_r^T, and B_dec^T is an increasing-stride butterfly
        return tw.transpose(-1, -2), r, c.argsort(-1), True
    swapped = torch.cat([tw[:, m:], tw[:, :m]], 1).transpose(-1, -2)
    return swapped, r, c.argsort(-1), False


# -- phase 2: near-miss polish (L-BFGS from the peeled factors, see _optimize) ----------------------
def _polish_start(near: Butterfly) -> Butterfly:
    """``near`` with a restart dimension of size 1 appended (fixed permutations)."""
    batch = tuple(near.batch_shape)

    def add_dim(p):
        if p is None:
            return None
        return p.unsqueeze(len(batch)) if p.dim() > 1 else p

    bf = Butterfly(
        near.in_features, near.out_features, complex=near.is_complex, real_output=near.real_output,
        nblocks=near.nblocks, increasing_stride=near.increasing_stride, in_perm=add_dim(near.in_perm),
        out_perm=add_dim(near.out_perm), init="identity", batch_shape=(*batch, 1), device=near.device,
        dtype=near.twiddle.real.dtype,
    )  # fmt: skip
    with torch.no_grad():
        bf.twiddle.copy_(near.twiddle.unsqueeze(len(batch)))
    return bf


# -- phase 3: gradient from random starts ---------------------------------------------------------
def _gradient(W, run: _Run) -> Butterfly:
    opts = run.options
    relax = opts.learn_perm and opts.relax
    batch, (out_f, in_f) = W.shape[:-2], W.shape[-2:]
    with seeded(opts.seed, W.device):  # the global RNG is left alone
        bf = Butterfly(
            in_f,
            out_f,
            complex=W.is_complex() or opts.complex is True,
            nblocks=opts.nblocks or 1,
            increasing_stride=opts.increasing_stride,
            bit_reversal=opts.bit_reversal and not relax,
            in_perm="learn" if relax else None,
            out_perm="learn" if relax else None,
            init="ortho",
            batch_shape=(*batch, opts.restarts),
            device=W.device,
            dtype=W.real.dtype,
        )
    if relax and opts.restarts > 1:  # half the restarts start (and, sigmoid saturated, stay) at identity
        with torch.no_grad():
            for relaxed in (bf.in_relaxed, bf.out_relaxed):
                relaxed.logits[..., opts.restarts // 2 :, :, :] = -8.0
    result = _optimize(bf, W, run, steps=opts.steps, label="adam")
    run.info["phase"] = "gradient"
    return result


# -- the optimisation of phases 2 and 3 ----------------------------------------------------------
def _stop_reason(err: float, tol: float, watch: _Stall, deadline: float | None) -> str | None:
    """Why an optimisation loop stops now: ``"tol"``, ``"stall"``, ``"time"``, or None to go on."""
    if err <= tol:
        return "tol"
    if watch(err):
        return "stall"
    if deadline is not None and time.perf_counter() > deadline:
        return "time"
    return None


def _optimize(bf: Butterfly, W: torch.Tensor, run: _Run, steps: int, label: str) -> Butterfly:
    """Adam (``steps``, may be 0), rounding of relaxed permutations, L-BFGS; the best restart.

    ``bf`` holds the restarts as its last batch dimension: ``batch_shape = (*W.shape[:-2], R)``.
    """
    opts, tol, deadline, bar, info = run.options, run.tol, run.deadline, run.bar, run.info
    lr, lbfgs_steps, patience = opts.lr, opts.lbfgs_steps, opts.patience
    batch = W.shape[:-2]
    real_dtype = W.real.dtype
    target = W.detach().unsqueeze(-3)  # (*batch, 1, out, in)
    scale = torch.linalg.matrix_norm(target).square().clamp_min(1.0)  # >= 1 unless W = 0 (W / max|W| above)

    def losses() -> torch.Tensor:  # (*batch, restarts) relative squared errors
        return torch.linalg.matrix_norm(target - bf.to_dense()).square() / scale

    def worst_best(loss: torch.Tensor) -> float:  # the worst matrix's best restart, relative error
        return loss.detach().amin(-1).max().clamp_min(0).sqrt().item()

    stopped = "steps"
    err = math.inf
    taken = 0
    if steps:
        opt = torch.optim.Adam(bf.parameters(), lr=lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
        watch = _Stall(patience)
        for _ in range(steps):
            opt.zero_grad()
            loss = losses()
            err = worst_best(loss)
            stopped = _stop_reason(err, tol, watch, deadline) or stopped
            if stopped != "steps":
                break
            loss.sum().backward()
            opt.step()
            sched.step()
            taken += 1
            bar.update()
            bar.set_postfix_str(f"{label} rel_err={err:.2e}", refresh=False)
        info["adam_steps"] += taken
    if bf.learns_permutations:
        bf.round_permutations()
        with torch.no_grad():
            err = worst_best(losses())
        bar.set_postfix_str(f"rounded permutations, rel_err={err:.2e}")
    else:
        with torch.no_grad():
            err = worst_best(losses())
    lb_taken = 0
    if lbfgs_steps and err > tol and stopped != "time":
        lbfgs = torch.optim.LBFGS(
            [bf.twiddle],
            lr=1.0,
            max_iter=1,
            max_eval=10,
            tolerance_grad=1e-14,
            tolerance_change=1e-20,
            history_size=50,
            line_search_fn="strong_wolfe",
        )

        def closure() -> torch.Tensor:
            lbfgs.zero_grad()
            loss = losses().sum()
            loss.backward()
            return loss

        watch = _Stall(max(patience // 10, 5))
        stopped = "steps"
        for _ in range(lbfgs_steps):
            lbfgs.step(closure)
            lb_taken += 1
            with torch.no_grad():
                err = worst_best(losses())
            bar.update()
            bar.set_postfix_str(f"{label} lbfgs rel_err={err:.2e}", refresh=False)
            stopped = _stop_reason(err, tol, watch, deadline) or stopped
            if stopped != "steps":
                break
    elif err <= tol:
        stopped = "tol"
    info["lbfgs_steps"] += lb_taken
    bar.set_postfix_str(f"{stopped}: rel_err={err:.2e}")

    with torch.no_grad():
        per_restart = relative_error(target, bf.to_dense())  # (*batch, restarts)
        best = per_restart.argmin(-1)  # (*batch,)
    nb = len(batch)
    result = Butterfly(
        bf.in_features,
        bf.out_features,
        complex=bf.is_complex,
        real_output=bf.real_output,
        nblocks=bf.nblocks,
        increasing_stride=bf.increasing_stride,
        in_perm=_take(bf.in_perm, best, nb),
        out_perm=_take(bf.out_perm, best, nb),
        init="identity",
        batch_shape=batch,
        device=W.device,
        dtype=real_dtype,
    )
    with torch.no_grad():
        result.twiddle.copy_(_take(bf.twiddle.detach(), best, nb))
    info.update(stopped=stopped, restart_errors=per_restart)
    return result


def _worse(a: Butterfly, b: Butterfly, W: torch.Tensor) -> bool:
    """Whether ``a`` fits ``W`` worse than ``b`` (the worst matrix of a stack decides)."""
    with torch.no_grad():
        return float(relative_error(W, a.to_dense()).max()) > float(relative_error(W, b.to_dense()).max())


def _take(t: torch.Tensor | None, best: torch.Tensor, nbatch: int) -> torch.Tensor | None:
    """Select restart ``best`` (*batch,) along dim ``nbatch`` of ``t`` (*batch, restarts, ...)."""
    if t is None:
        return None
    if t.dim() == 1:  # one permutation shared by all restarts
        return t
    idx = best.reshape(*best.shape, 1, *([1] * (t.dim() - nbatch - 1)))
    idx = idx.expand(*best.shape, 1, *t.shape[nbatch + 1 :])
    out = t.gather(nbatch, idx).squeeze(nbatch)
    return out


class _Stall:
    """True once the best error so far has not fallen by 1% over the last ``patience`` steps."""

    def __init__(self, patience: int):
        self.patience = patience
        self.best: list[float] = []

    def __call__(self, err: float) -> bool:
        self.best.append(min(err, self.best[-1]) if self.best else err)
        if len(self.best) <= self.patience:
            return False
        return not self.best[-1] < 0.99 * self.best[-1 - self.patience]
