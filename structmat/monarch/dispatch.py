"""Which way a Monarch multiply runs: one selector, :func:`select_path`, that every caller uses.

Paths (same result; values and gradients checked against the entrywise formula in
``tests/monarch/test_paths.py``):

- ``EXPANDED``: the factors written out per call as block-sparse ``(k*q, in)`` and ``(k*q, out)``
  matrices (``factors.expand_factors``), then two plain GEMMs. No activation is copied; it does
  ``nblocks`` times the FLOPs of ``BMM``, which is cheap while the middle ``k*q`` is small (MoRe
  adapters: ``nblocks * rank``), and then it is the faster one.
- ``EXPANDED_WITH_BASE``: the same with a frozen ``nn.Linear`` (MoRe's base layer) in the same
  autograd node: forward adds the update into the base output, backward adds the update's input
  gradient into the base's in place (BLAS ``beta=1``).
- ``BMM``: block-major batched matmuls (the reference algorithm); the middle and output
  permutations are copies of activations. Wider middles.
- ``EINSUM``: stacks of factors (``batch_shape``), broadcast over the tokens.
- ``TRITON``: the fused kernel of :mod:`.triton_kernel` (optional ``triton``, CUDA).

Complex factors (or a complex ``x``) run on ``BMM`` (its backward conjugates, as autograd does for
complex tensors), stacks of them on ``EINSUM``; the expanded paths and the kernel are written for
real factors and step aside whatever the backend says.

The choice can be forced: ``with structmat.monarch.backend("bmm"):`` (or ``"expanded"``,
``"triton"``, ``"torch"`` = the PyTorch paths by width, ``"auto"``), or the environment variable
``STRUCTMAT_MONARCH_BACKEND`` (read at each call; the context manager wins). A forced path that
cannot run a call (batched factors, a base that cannot be fused) falls back to what can.
"""

from __future__ import annotations

import contextlib
import contextvars
import enum
import functools
import importlib.util
import os
from collections.abc import Callable, Iterator

import torch
from torch import nn

from .factors import middle_width

# The expanded path is used while the middle width k*q is at most this. Set from
# benchmarks/bench_multiply.py and bench_layer.py on CPU (results in benchmarks/results/): the
# expanded path beat bmm at every MoRe shape there (middles 4-32); on an H100
# (benchmarks/bench_triton.py) cuBLAS on the expanded factors beat the Triton kernel up to 32.
EXPANDED_MAX_MIDDLE = 32
# Backend "auto" on CUDA sends middles in this range to the Triton kernel: there it beat bmm on an
# H100 (benchmarks/results/bench_triton.md: 1.58x at nblocks 8 x rank 8), and lost to bmm at 128.
TRITON_AUTO_MIDDLE = range(EXPANDED_MAX_MIDDLE + 1, 65)

BACKENDS = ("auto", "torch", "expanded", "bmm", "triton")
ENV_BACKEND = "STRUCTMAT_MONARCH_BACKEND"
_backend: contextvars.ContextVar[str | None] = contextvars.ContextVar("structmat_monarch_backend", default=None)


class MultiplyPath(enum.Enum):
    """The ways a Monarch multiply runs (see the module doc); :func:`select_path` picks one."""

    EXPANDED = "expanded"
    EXPANDED_WITH_BASE = "expanded_with_base"
    BMM = "bmm"
    EINSUM = "einsum"
    TRITON = "triton"


def _check_backend(name: object, source: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"{source} must be one of {BACKENDS}, got {name!r}")
    return name


@contextlib.contextmanager
def backend(name: str) -> Iterator[None]:
    """``with backend("bmm"): ...`` runs the Monarch multiplies inside on that path (this thread
    or task only; see the module doc). ``"triton"`` needs triton installed."""
    _check_backend(name, "backend")
    if name == "triton" and not triton_installed():
        raise ModuleNotFoundError("backend 'triton' needs triton: pip install 'structmat[triton]'")
    token = _backend.set(name)
    try:
        yield
    finally:
        _backend.reset(token)


def _assume_constant_result(fn: Callable[[], str]) -> Callable[[], str]:
    """``torch.compiler.assume_constant_result`` without its import of ``torch._dynamo`` (about 1 s,
    most of ``import structmat``): that decorator only sets this attribute, which dynamo reads when
    it traces a call (``tests/monarch/test_paths.py`` checks the two mark a function alike)."""
    fn._dynamo_marked_constant = True  # type: ignore[attr-defined]
    return fn


@_assume_constant_result  # under torch.compile: the backend in force when tracing
def get_backend() -> str:
    """The backend in force: the innermost :func:`backend` context, else the environment
    variable ``STRUCTMAT_MONARCH_BACKEND``, else ``"auto"``. (Code compiled by ``torch.compile``
    keeps the backend that was in force when it was traced.)"""
    name = _backend.get()
    if name is None:
        name = _check_backend(os.environ.get(ENV_BACKEND, "auto"), f"the environment variable {ENV_BACKEND}")
    return name


@functools.cache
def triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def has_hooks(module: nn.Module) -> bool:
    """Whether calling ``module`` would run hooks: its own forward/backward (pre-)hooks, or the
    module hooks registered for every module (``nn.modules.module.register_module_*_hook``,
    which torch keeps in these module-level dicts)."""
    own = (module._forward_hooks, module._forward_pre_hooks, module._backward_hooks, module._backward_pre_hooks)
    everywhere = nn.modules.module
    return any(own) or any(
        (
            everywhere._global_forward_hooks,
            everywhere._global_forward_pre_hooks,
            everywhere._global_backward_hooks,
            everywhere._global_backward_pre_hooks,
        )
    )


def base_fusable(x: torch.Tensor, blkdiag1: torch.Tensor, blkdiag2: torch.Tensor, base: nn.Module) -> bool:
    """Whether ``base`` (a frozen layer in front of the update) can run inside the expanded
    path's autograd node and give exactly what calling it would: a plain ``nn.Linear`` (not a
    subclass, not patched, no hooks) of the factors' full size, everything in one dtype."""
    k, _, p = blkdiag1.shape
    l, s, _ = blkdiag2.shape
    return (
        type(base) is nn.Linear  # a subclass (a quantized layer, ...) keeps its own forward
        and "forward" not in base.__dict__  # nor a patched instance (accelerate's hooks)
        and not has_hooks(base)
        and base.in_features == k * p  # no padding
        and base.out_features == l * s  # no cropping
        and x.dtype == base.weight.dtype == blkdiag1.dtype == blkdiag2.dtype
    )


def _triton_takes(x: torch.Tensor, blkdiag1: torch.Tensor, blkdiag2: torch.Tensor, choice: str) -> bool:
    if choice not in ("auto", "triton") or torch.compiler.is_compiling() or not triton_installed():
        return False
    if torch.is_autocast_enabled(x.device.type):
        return False
    if choice == "auto" and not (x.is_cuda and middle_width(blkdiag1) in TRITON_AUTO_MIDDLE):
        return False
    if not x.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":  # the kernel runs on CPU only interpreted
        return False
    from .triton_kernel import supports  # lazy: triton is optional

    return supports(x, blkdiag1, blkdiag2)


def select_path(
    x: torch.Tensor,  # (..., k*p)
    blkdiag1: torch.Tensor,  # (*batch, k, q, p)
    blkdiag2: torch.Tensor,  # (*batch, l, s, r)
    *,
    base: nn.Module | None = None,
    dropout: float = 0.0,
) -> MultiplyPath:
    """The path for ``x @ M.T`` (see the module doc).

    ``base``: a frozen layer whose output the update is added to (MoRe's base layer), to be run
    in the same node when :func:`base_fusable`; ``dropout``: the probability of the dropout in
    front of the update while training (the base then sees other inputs: never fused).
    """
    if blkdiag1.dim() > 3:
        return MultiplyPath.EINSUM
    if blkdiag1.is_complex() or x.is_complex():
        return MultiplyPath.BMM
    choice = get_backend()
    if _triton_takes(x, blkdiag1, blkdiag2, choice):
        return MultiplyPath.TRITON
    if choice == "bmm" or (choice != "expanded" and middle_width(blkdiag1) > EXPANDED_MAX_MIDDLE):
        return MultiplyPath.BMM
    fuse = (
        base is not None
        and dropout == 0.0
        and not torch.is_autocast_enabled(x.device.type)
        and base_fusable(x, blkdiag1, blkdiag2, base)
    )
    return MultiplyPath.EXPANDED_WITH_BASE if fuse else MultiplyPath.EXPANDED
