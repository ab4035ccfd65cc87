"""``MoReLinear``: a frozen linear layer plus named Monarch updates, ``base(x) + monarch(dropout(x))``."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..monarch import Monarch, MultiplyPath, select_path
from ..monarch.fit import fit_monarch
from ..monarch.multiply import run_path
from ..monarch.structure import Layout
from .sharding import full_tensor, is_sharded, shard_like


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
    """An adapter name is a non-empty string without ``.``, ``/`` or ``\\`` (it becomes a
    ``ModuleDict`` key and a folder name when saved) and not an attribute of ``nn.ModuleDict``
    (``"update"``, ``"keys"``, ``"train"``, ``"to"``, ...: the dict cannot hold those keys)."""
    if not isinstance(name, str) or not name or any(c in name for c in "./\\"):
        raise ValueError(f"adapter_name must be a non-empty string without '.', '/' or '\\\\', got {name!r}")
    if hasattr(nn.ModuleDict(), name):  # an instance: "training" too
        raise ValueError(f"adapter_name {name!r} is an attribute of nn.ModuleDict (it cannot be a key); choose another")
    return name


def new_update(base_layer: nn.Module, nblocks: int, rank: int, layout: Layout = "structmat") -> Monarch:
    """A zero update for ``base_layer`` (``blkdiag2 = 0``, ``blkdiag1`` kaiming), on its weight's
    device and dtype; a shape that does not fit raises ``ValueError`` naming the layer's size.
    ``layout``: see :meth:`~structmat.MonarchShape.for_more`."""
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
            layout=layout,
            device=weight.device,
            dtype=weight.dtype if weight.is_floating_point() else None,
        )
    except ValueError as err:
        raise ValueError(f"{err} (layer of shape in={in_f}, out={out_f})") from None
    # Keep only x for backward (the frozen base layer keeps it anyway): less memory than
    # LoRA, which also keeps A @ x; costs one small recomputed product.
    monarch.recompute_middle = True
    return monarch


def projection_update(
    base_layer: nn.Module,
    nblocks: int,
    rank: int,
    layout: Layout = "structmat",
    factors: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> Monarch:
    """The best Monarch approximation ``M`` of ``base_layer``'s weight (``fit_monarch``), or the
    Monarch with the given ``factors`` (``(blkdiag1, blkdiag2)``, as saved), as a trainable update."""
    in_f, out_f = base_shape(base_layer)
    weight = base_layer.weight.detach()
    if factors is None:
        try:
            monarch = fit_monarch(
                weight if isinstance(base_layer, nn.Linear) else weight.T, nblocks, rank, layout=layout
            )
        except ValueError as err:
            raise ValueError(f"{err} (layer of shape in={in_f}, out={out_f})") from None
    else:
        w1, w2 = (f.detach().clone().to(device=weight.device, dtype=weight.dtype) for f in factors)
        monarch = Monarch.from_factors(w1, w2, in_f, out_f)
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
    modules stays tied and untouched) until ``unmerge()`` puts it back, bit for bit. A
    parametrized base weight (``weight_norm``, ...) gets ``ΔW`` as one more parametrization.

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
        dropout_position: str = "input",
        projection: bool = False,
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
        self.dropout_position: dict[str, str] = {}  # adapter name -> "input" (LoRA's) or "output"
        self.more_init = nn.ModuleDict()  # projection-initialised adapters: their frozen M at init
        self.add_adapter(
            adapter_name,
            nblocks,
            rank,
            dropout,
            monarch=monarch,
            dropout_position=dropout_position,
            projection=projection,
        )

    # -- named adapters -------------------------------------------------------------------------
    def add_adapter(
        self,
        adapter_name: str,
        nblocks: int,
        rank: int,
        dropout: float = 0.0,
        monarch: Monarch | None = None,
        dropout_position: str = "input",
        projection: bool = False,
    ) -> None:
        """Add an adapter (``monarch``, or a fresh zero update); the first one becomes active.
        ``dropout_position``: ``"input"`` (LoRA's) or ``"output"`` (the MoRe reference's).

        ``projection``: ``monarch`` is the weight's own approximation ``M`` (see
        :func:`projection_update`); the base weight becomes a new frozen ``Parameter``
        ``W - M`` and a frozen copy of ``M`` is kept (``more_init``), so that
        :func:`disable_adapter`, ``delete_adapter`` and ``unload`` give ``W`` back (up to
        rounding) and a save can rebuild the residual. It must be the layer's only adapter.
        """
        check_adapter_name(adapter_name)
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be a number in [0, 1), got {dropout!r}")
        if projection and (self.more or monarch is None):
            raise ValueError("a projection-initialised adapter needs its update and must be the layer's only adapter")
        if dropout_position not in ("input", "output"):
            raise ValueError(f"dropout_position must be 'input' or 'output', got {dropout_position!r}")
        if adapter_name in self.more:
            raise ValueError(f"this layer already has an adapter named {adapter_name!r}")
        self.more[adapter_name] = monarch if monarch is not None else new_update(self.base_layer, nblocks, rank)
        self.more_dropout[adapter_name] = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.dropout_position[adapter_name] = dropout_position
        if projection:
            init = Monarch.from_factors(
                monarch.blkdiag1.detach().clone(),
                monarch.blkdiag2.detach().clone(),
                self.in_features,
                self.out_features,
            ).requires_grad_(False)
            self.more_init[adapter_name] = init
            weight = self.base_layer.weight
            residual = weight.detach() - self._in_weight_layout(init.to_dense()).to(weight.dtype)
            self.base_layer.weight = nn.Parameter(residual, requires_grad=False)
        if self.active_adapter is None:
            self.active_adapter = adapter_name

    def delete_adapter(self, adapter_name: str) -> None:
        if self.merged_adapter == adapter_name:
            raise ValueError(f"adapter {adapter_name!r} is merged into the base weight; unmerge() first")
        self.restore_base_weight(adapter_name)
        del self.more[adapter_name]
        del self.more_dropout[adapter_name]
        self.dropout_position.pop(adapter_name, None)
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
        monarch = self.more[adapter_name] if adapter_name is not None else self.monarch
        if is_sharded(monarch.blkdiag1):  # FSDP2, outside forward: multiply the whole factors
            w1, w2 = full_tensor(monarch.blkdiag1.detach()), full_tensor(monarch.blkdiag2.detach())
            monarch = Monarch.from_factors(w1, w2, monarch.in_features, monarch.out_features)
        return self._in_weight_layout(monarch.to_dense())

    def _in_weight_layout(self, dense: torch.Tensor) -> torch.Tensor:  # (out, in) -> the base weight's layout
        return dense.T if self.is_conv1d else dense

    @torch.no_grad()
    def restore_base_weight(self, adapter_name: str) -> None:
        """For a projection-initialised adapter: put ``W = (W - M) + M`` back as the base weight
        (equal to the original up to one rounding) and forget ``M``; otherwise nothing."""
        if adapter_name not in self.more_init:
            return
        init = self.more_init.pop(adapter_name)
        weight = self.base_layer.weight
        restored = weight + self._in_weight_layout(init.to_dense()).to(weight.dtype)
        self.base_layer.weight = nn.Parameter(restored, requires_grad=False)

    # -- forward --------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base = self.base_layer
        if self.disabled and self.active_adapter in self.more_init and self.merged_adapter is None:
            return self.more_init[self.active_adapter].addmm(base(x), x)  # (W - M) x + M x = W x
        if self.merged_adapter is not None or self.disabled or self.active_adapter not in self.more:
            return base(x)
        monarch, dropout = self.more[self.active_adapter], self.more_dropout[self.active_adapter]
        p = dropout.p if isinstance(dropout, nn.Dropout) and dropout.training else 0.0
        if p and self.dropout_position.get(self.active_adapter) == "output":  # the MoRe reference's placement
            return base(x) + dropout(monarch(x.to(monarch.dtype)))
        w1, w2 = monarch.blkdiag1, monarch.blkdiag2
        if self.fused and select_path(x, w1, w2, base=base, dropout=p) is MultiplyPath.EXPANDED_WITH_BASE:
            return run_path(
                MultiplyPath.EXPANDED_WITH_BASE, x, w1, w2, weight=base.weight, bias=base.bias, save_middle=False
            )
        return monarch.addmm(base(x), dropout(x).to(monarch.dtype))  # y + update, the add fused

    # -- merge ----------------------------------------------------------------------------------
    @torch.no_grad()
    def merged_weight(self) -> torch.Tensor:
        """``W + ΔW`` of the active adapter, in the base weight's layout and dtype (nothing changes)."""
        return self.base_layer.weight + self._weight_delta()

    def _weight_delta(self) -> torch.Tensor:
        """``ΔW`` laid out like the base weight: its dtype, and its shards under FSDP2."""
        weight = self.base_layer.weight
        return shard_like(self.delta_weight().to(weight.dtype), weight)

    @torch.no_grad()
    def merge(self, safe_merge: bool = False) -> None:
        """Use ``W + ΔW`` (active adapter) as the base weight; ``safe_merge`` checks it is finite.

        The merged weight is a new ``Parameter``; the original one is kept aside (not registered:
        the parameter count and ``state_dict()`` keys stay as they were; ``.to()`` moves it along)
        and never written to, so a weight shared with other modules (tied embeddings) stays as it
        was for them. A parametrized weight (``weight_norm``) gets ``+ ΔW`` appended to its
        parametrizations instead, its own parameters untouched.

        On a model sharded with FSDP2 (``fully_shard``) every process must call this. FSDP owns
        the weight ``Parameter`` there, so each process writes ``W + ΔW`` into its own shard in
        place and keeps a copy of the shard for :meth:`unmerge`.
        """
        if self.merged_adapter is not None:
            return
        weight = self.base_layer.weight
        delta = self._weight_delta()
        merged = weight + delta
        if safe_merge and not bool(torch.isfinite(full_tensor(merged)).all()):
            raise ValueError("safe_merge: merging this adapter produces NaN or inf weights; not merged")
        if is_sharded(weight):
            self.unmerged_shard = weight.detach().to_local().clone()
            weight.detach().to_local().copy_(merged.to_local())
        elif parametrize.is_parametrized(self.base_layer, "weight"):
            parametrize.register_parametrization(self.base_layer, "weight", AddDelta(delta))
        else:
            self._unmerged = (weight,)  # a tuple: not registered as a parameter of this module
            self.base_layer.weight = nn.Parameter(merged, requires_grad=weight.requires_grad)
        self.merged_adapter = self.active_adapter

    @torch.no_grad()
    def unmerge(self) -> None:
        """Put the original base weight (the very same ``Parameter``) back."""
        if self.merged_adapter is None:
            return
        if hasattr(self, "unmerged_shard"):  # FSDP2: the shard was written in place
            self.base_layer.weight.detach().to_local().copy_(self.unmerged_shard)
            del self.unmerged_shard
        elif parametrize.is_parametrized(self.base_layer, "weight") and not hasattr(self, "_unmerged"):
            del self.base_layer.parametrizations.weight[-1]  # the AddDelta merge() appended
        else:
            self.base_layer.weight = self._unmerged[0]
            del self._unmerged
        self.merged_adapter = None

    @torch.no_grad()
    def fold_merge(self) -> None:
        """Make the merge permanent (``merge_and_unload``): a parametrized weight becomes a plain
        one holding ``W + ΔW``; the kept original is dropped."""
        if self.merged_adapter is None:
            return
        if hasattr(self, "unmerged_shard"):
            del self.unmerged_shard
        elif hasattr(self, "_unmerged"):
            del self._unmerged
        elif parametrize.is_parametrized(self.base_layer, "weight"):
            parametrize.remove_parametrizations(self.base_layer, "weight", leave_parametrized=True)

    @property
    def unmerged_weight(self) -> torch.Tensor:
        """The original base weight ``Parameter`` while merged (else, and for a parametrized
        weight, the base weight)."""
        kept = getattr(self, "_unmerged", None)
        return kept[0] if kept is not None else self.base_layer.weight

    def _apply(self, fn, recurse=True):
        """``.to()`` / ``.half()`` / ``.cuda()``: the kept original weight follows the base weight."""
        super()._apply(fn, recurse)
        kept = getattr(self, "_unmerged", None)
        if kept is not None:
            weight, original = self.base_layer.weight, kept[0]
            if original.device != weight.device or original.dtype != weight.dtype:
                original.data = original.data.to(device=weight.device, dtype=weight.dtype)
        return self

    @property
    def merged(self) -> bool:
        return self.merged_adapter is not None

    def extra_repr(self) -> str:
        return f"active_adapter={self.active_adapter!r}, merged={self.merged}, disabled={self.disabled}"


class AddDelta(nn.Module):
    """The parametrization ``W -> W + delta``: a merged adapter on a parametrized weight."""

    def __init__(self, delta: torch.Tensor):
        super().__init__()
        self.register_buffer("delta", delta, persistent=False)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + self.delta
