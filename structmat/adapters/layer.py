"""``MoReLinear``: a frozen linear layer plus named Monarch updates, ``base(x) + monarch(dropout(x))``."""

from __future__ import annotations

import torch
from torch import nn

from ..monarch import Monarch, Path, select_path
from ..monarch.multiply import run_path


def base_shape(base: nn.Module) -> tuple[int, int]:
    """``(in_features, out_features)`` of an ``nn.Linear`` or a transformers ``Conv1D``; any
    other layer (``nn.Conv2d``, ``nn.Bilinear``, ``nn.Embedding``, ...) raises ``TypeError``."""
    linear = isinstance(base, nn.Linear) or type(base).__name__ == "Conv1D"  # targets.is_linear (no import cycle)
    if not linear or not isinstance(getattr(base, "weight", None), torch.Tensor) or base.weight.dim() != 2:
        raise TypeError(
            f"base_layer must be an nn.Linear or a transformers Conv1D, got {type(base).__name__}: MoRe adapts "
            f"linear layers only"
        )
    if isinstance(base, nn.Linear):
        return base.in_features, base.out_features
    in_f, out_f = base.weight.shape  # Conv1D stores (in, out): y = x @ W + b
    return in_f, out_f


def check_adapter_name(name: object) -> str:
    """An adapter name is a non-empty string without dots (it becomes a ``ModuleDict`` key)."""
    if not isinstance(name, str) or not name or "." in name:
        raise ValueError(f"adapter_name must be a non-empty string without '.', got {name!r}")
    return name


def new_update(base_layer: nn.Module, nblocks: int, rank: int) -> Monarch:
    """A zero update for ``base_layer`` (``blkdiag2 = 0``, ``blkdiag1`` kaiming), on its weight's
    device and dtype; a shape that does not fit raises ``ValueError`` naming the layer's size."""
    in_f, out_f = base_shape(base_layer)
    weight = base_layer.weight
    try:
        monarch = Monarch(
            in_f,
            out_f,
            nblocks,
            rank,
            init1="kaiming",
            init2="zeros",
            device=weight.device,
            dtype=weight.dtype if weight.is_floating_point() else None,
        )
    except ValueError as err:
        raise ValueError(f"{err} (layer of shape in={in_f}, out={out_f})") from None
    # Keep only x for backward (the frozen base layer keeps it anyway): less memory than
    # LoRA, which also keeps A @ x; costs one small recomputed product.
    monarch.recompute_middle = True
    return monarch


class MoReLinear(nn.Module):
    """Wraps ``base_layer`` (``nn.Linear`` or ``Conv1D``, frozen) with one or more named MoRe updates.

    ``forward(x) = base_layer(x) + more[active](dropout(x))`` where ``more[name]`` is a
    :class:`~structmat.Monarch` of shape ``(out, in)`` whose ``blkdiag2`` is zero at init, so the
    wrapped layer starts equal to the base layer. No alpha scaling (MoRe has none). Dropout acts
    on the adapter's input, as in LoRA (the MoRe reference puts it on the output).

    Adapters live in ``more`` (an ``nn.ModuleDict``: parameters ``more.<name>.blkdiag1``); the
    active one is :attr:`monarch`. ``merge()`` folds the active adapter's ``ΔW`` into a new base
    weight and keeps the original weight (the same ``Parameter``, so a weight tied to other
    modules stays tied and untouched) until ``unmerge()`` puts it back, bit for bit.

    For a plain ``nn.Linear`` base (no hooks, no dropout, one dtype, small middle width, no
    Triton) the base and the update run as one autograd node (the expanded path with the base,
    :mod:`structmat.monarch.dispatch`); ``fused = False`` turns that off. Both ways give the same
    values and gradients.
    """

    fused: bool = True

    def __init__(
        self,
        base_layer: nn.Module,
        nblocks: int = 4,
        rank: int = 4,
        dropout: float = 0.0,
        *,
        adapter_name: str = "default",
        monarch: Monarch | None = None,
    ):
        super().__init__()
        in_f, out_f = base_shape(base_layer)
        self.base_layer = base_layer
        self.in_features, self.out_features = in_f, out_f
        self.is_conv1d = not isinstance(base_layer, nn.Linear)
        self.more = nn.ModuleDict()
        self.more_dropout = nn.ModuleDict()
        self.active_adapter: str | None = None
        self.merged_adapter: str | None = None
        self.disabled = False
        self.add_adapter(adapter_name, nblocks, rank, dropout, monarch=monarch)

    # -- named adapters -------------------------------------------------------------------------
    def add_adapter(
        self, adapter_name: str, nblocks: int, rank: int, dropout: float = 0.0, monarch: Monarch | None = None
    ) -> None:
        """Add an adapter (``monarch``, or a fresh zero update); the first one becomes active."""
        check_adapter_name(adapter_name)
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be a number in [0, 1), got {dropout!r}")
        if adapter_name in self.more:
            raise ValueError(f"this layer already has an adapter named {adapter_name!r}")
        self.more[adapter_name] = monarch if monarch is not None else new_update(self.base_layer, nblocks, rank)
        self.more_dropout[adapter_name] = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        if self.active_adapter is None:
            self.active_adapter = adapter_name

    def delete_adapter(self, adapter_name: str) -> None:
        if self.merged_adapter == adapter_name:
            raise ValueError(f"adapter {adapter_name!r} is merged into the base weight; unmerge() first")
        del self.more[adapter_name]
        del self.more_dropout[adapter_name]
        if self.active_adapter == adapter_name:
            self.active_adapter = next(iter(self.more), None)

    def set_adapter(self, adapter_name: str) -> None:
        """Make ``adapter_name`` the one :meth:`forward` adds (it need not exist on this layer:
        then the layer computes the base layer alone)."""
        if self.merged_adapter is not None and adapter_name != self.merged_adapter:
            raise ValueError(f"adapter {self.merged_adapter!r} is merged into the base weight; unmerge() first")
        self.active_adapter = adapter_name

    @property
    def monarch(self) -> Monarch:
        """The active adapter's Monarch update."""
        if self.active_adapter not in self.more:
            raise AttributeError(f"this layer has no active adapter (adapters: {list(self.more)})")
        return self.more[self.active_adapter]

    def delta_weight(self, adapter_name: str | None = None) -> torch.Tensor:
        """``ΔW`` in the base layer's layout: ``(out, in)`` for Linear, ``(in, out)`` for Conv1D."""
        delta = (self.more[adapter_name] if adapter_name is not None else self.monarch).to_dense()
        return delta.T if self.is_conv1d else delta

    # -- forward --------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base = self.base_layer
        if self.merged_adapter is not None or self.disabled or self.active_adapter not in self.more:
            return base(x)
        monarch, dropout = self.more[self.active_adapter], self.more_dropout[self.active_adapter]
        p = dropout.p if isinstance(dropout, nn.Dropout) and dropout.training else 0.0
        w1, w2 = monarch.blkdiag1, monarch.blkdiag2
        if self.fused and select_path(x, w1, w2, base=base, dropout=p) is Path.EXPANDED_WITH_BASE:
            return run_path(Path.EXPANDED_WITH_BASE, x, w1, w2, weight=base.weight, bias=base.bias, save_middle=False)
        return monarch.addmm(base(x), dropout(x).to(monarch.dtype))  # y + update, the add fused

    # -- merge ----------------------------------------------------------------------------------
    @torch.no_grad()
    def merged_weight(self) -> torch.Tensor:
        """``W + ΔW`` of the active adapter, in the base weight's layout and dtype (nothing changes)."""
        weight = self.base_layer.weight
        return weight + self.delta_weight().to(weight.dtype)

    @torch.no_grad()
    def merge(self, safe_merge: bool = False) -> None:
        """Use ``W + ΔW`` (active adapter) as the base weight; ``safe_merge`` checks it is finite.

        The merged weight is a new ``Parameter``; the original one is kept (registered as
        ``unmerged_weight``, so ``.to()`` moves it) and never written to, so a weight shared
        with other modules (tied embeddings) stays as it was for them.
        """
        if self.merged_adapter is not None:
            return
        weight = self.base_layer.weight
        merged = self.merged_weight()
        if safe_merge and not bool(torch.isfinite(merged).all()):
            raise ValueError("safe_merge: merging this adapter produces NaN or inf weights; not merged")
        self.unmerged_weight = weight
        self.base_layer.weight = nn.Parameter(merged, requires_grad=weight.requires_grad)
        self.merged_adapter = self.active_adapter

    @torch.no_grad()
    def unmerge(self) -> None:
        """Put the original base weight (the very same ``Parameter``) back."""
        if self.merged_adapter is None:
            return
        self.base_layer.weight = self.unmerged_weight
        del self.unmerged_weight
        self.merged_adapter = None

    @property
    def merged(self) -> bool:
        return self.merged_adapter is not None

    def extra_repr(self) -> str:
        return f"active_adapter={self.active_adapter!r}, merged={self.merged}, disabled={self.disabled}"
