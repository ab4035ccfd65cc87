"""Dense-to-Monarch replacement: chosen linear layers become their optimal Monarch projection.

The MoRe reference's ``adapter=False`` mode and the Monarch paper's "dense-to-sparse"
fine-tuning: each targeted ``nn.Linear`` (or transformers ``Conv1D``) of weight ``W`` becomes a
:class:`MonarchLinear` computing ``x @ M.T + b`` with ``M = fit_monarch(W)`` (the closest Monarch
matrix in Frobenius norm; the bias is kept), and only the Monarch factors train. The model
changes by exactly that projection: each layer's ``monarch.fit_error`` equals
``optimal_error(W, "monarch", nblocks=..., rank=...)``. (The reference projects ``W.T`` there,
which is not the optimum of ``W`` and fails for rectangular weights.)
"""

from __future__ import annotations

import torch
from torch import nn

from ..checks import check_bool, check_positive_int
from ..monarch import Monarch
from ..monarch.fit import fit_monarch
from .layer import base_shape
from .targets import TargetSpec, check_target_spec, resolve_targets


class MonarchLinear(nn.Module):
    """``y = x @ M.T + bias``: a linear layer whose weight is a :class:`~structmat.Monarch` ``M``.

    ``monarch`` maps ``(..., in_features)`` to ``(..., out_features)``; ``bias`` is
    ``(out_features,)`` or ``None``.
    """

    def __init__(self, monarch: Monarch, bias: torch.Tensor | None = None):
        if not isinstance(monarch, Monarch) or monarch.batch_shape:
            raise TypeError(f"monarch must be a Monarch without batch dims, got {type(monarch).__name__}")
        if bias is not None and (
            not isinstance(bias, torch.Tensor) or tuple(bias.shape) != (monarch.out_features,) or bias.dtype.is_complex
            or not bias.is_floating_point()
        ):  # fmt: skip
            raise ValueError(f"bias must be None or a float tensor of shape ({monarch.out_features},), got {bias!r}")
        super().__init__()
        self.monarch = monarch
        self.in_features, self.out_features = monarch.in_features, monarch.out_features
        self.bias = nn.Parameter(bias.detach().clone(), requires_grad=False) if bias is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., in) -> (..., out)
        y = self.monarch(x)
        return y + self.bias if self.bias is not None else y

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def replace_with_monarch(
    model: nn.Module,
    target_modules: TargetSpec,
    nblocks: int = 4,
    rank: int = 4,
    *,
    exclude_modules: TargetSpec = None,
    train_bias: bool = False,
) -> nn.Module:
    """Replace the targeted linear layers of ``model`` by their optimal Monarch projection, in place.

    Args:
        model: any ``nn.Module``; not modified when an argument is refused.
        target_modules: layer names, a regex or ``"all-linear"`` (as :func:`apply_more`).
        nblocks, rank: the Monarch shape (MoRe's; ``rank * (in + out)`` parameters per layer).
        exclude_modules: layers never to replace.
        train_bias: also train the kept biases (default: only the Monarch factors train).

    Every other parameter of the model is frozen. Returns ``model``, whose replaced layers are
    :class:`MonarchLinear` (each ``layer.monarch.fit_error`` is its relative projection error).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    check_target_spec("target_modules", target_modules)
    check_target_spec("exclude_modules", exclude_modules)
    check_positive_int("nblocks", nblocks)
    check_positive_int("rank", rank)
    check_bool("train_bias", train_bias)
    names = resolve_targets(model, target_modules, exclude_modules)
    projections = {}
    for name in names:  # every fit before the model changes: a bad shape leaves it untouched
        layer = model.get_submodule(name)
        weight = layer.weight.detach()
        weight = weight if isinstance(layer, nn.Linear) else weight.T  # Conv1D keeps (in, out)
        try:
            projections[name] = fit_monarch(weight, nblocks, rank, method="svd")  # the exact optimum, every size
        except ValueError as err:
            in_f, out_f = base_shape(layer)
            raise ValueError(f"cannot replace {name!r} (in={in_f}, out={out_f}): {err}") from None
    for p in model.parameters():
        p.requires_grad_(False)
    for name, monarch in projections.items():
        layer = model.get_submodule(name)
        replacement = MonarchLinear(monarch, layer.bias).to(layer.weight.device)
        replacement.monarch.requires_grad_(True)
        if replacement.bias is not None:
            replacement.bias.requires_grad_(train_bias)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, replacement)
    return model
