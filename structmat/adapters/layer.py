"""``MoReLinear``: a frozen linear layer plus a Monarch update, ``base(x) + monarch(dropout(x))``."""

from __future__ import annotations

import torch
from torch import nn

from ..monarch import Monarch, multiply
from .fused import FrozenLinearMonarch


def base_shape(base: nn.Module) -> tuple[int, int]:
    """``(in_features, out_features)`` of an ``nn.Linear`` or a transformers ``Conv1D``."""
    if isinstance(base, nn.Linear):
        return base.in_features, base.out_features
    in_f, out_f = base.weight.shape  # Conv1D stores (in, out): y = x @ W + b
    return in_f, out_f


class MoReLinear(nn.Module):
    """Wraps ``base_layer`` (``nn.Linear`` or ``Conv1D``, frozen) with a MoRe update.

    ``forward(x) = base_layer(x) + more(dropout(x))`` where ``more`` is a
    :class:`~structmat.Monarch` of shape ``(out, in)`` with ``blkdiag2`` zero at init, so the
    wrapped layer starts equal to the base layer. No alpha scaling (MoRe has none). Dropout
    acts on the adapter's input, as in LoRA (the MoRe reference puts it on the output).

    ``merge()`` folds ``ΔW = more.to_dense()`` into the base weight and keeps the original
    weight so that ``unmerge()`` restores it bit for bit.

    For a plain ``nn.Linear`` base (no hooks, no dropout, one dtype, small middle width, no
    Triton) the base and the update run as one autograd node
    (:class:`~structmat.adapters.fused.FrozenLinearMonarch`); ``fused = False`` turns that off.
    Both ways give the same values and gradients.
    """

    fused: bool = True

    def __init__(self, base_layer: nn.Module, nblocks: int = 4, rank: int = 4, dropout: float = 0.0):
        super().__init__()
        in_f, out_f = base_shape(base_layer)
        weight = base_layer.weight
        self.base_layer = base_layer
        self.in_features, self.out_features = in_f, out_f
        self.is_conv1d = not isinstance(base_layer, nn.Linear)
        try:
            self.more = Monarch(
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
        # LoRA, which also keeps A @ x; costs one small recomputed bmm.
        self.more.recompute_middle = True
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False
        self.disabled = False
        self._original_weight: torch.Tensor | None = None

    def delta_weight(self) -> torch.Tensor:
        """``ΔW`` in the base layer's layout: ``(out, in)`` for Linear, ``(in, out)`` for Conv1D."""
        delta = self.more.to_dense()
        return delta.T if self.is_conv1d else delta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base = self.base_layer
        if self.merged or self.disabled:
            return base(x)
        if self._fusable(x):
            return FrozenLinearMonarch.apply(x, base.weight, base.bias, self.more.blkdiag1, self.more.blkdiag2)
        return self.more.addmm(base(x), self.dropout(x).to(self.more.dtype))  # y + update, fused

    def _fusable(self, x: torch.Tensor) -> bool:
        """Whether :class:`FrozenLinearMonarch` computes exactly what the unfused path would."""
        base, st = self.base_layer, self.more.structure
        module_hooks = nn.modules.module
        return (
            self.fused
            and type(base) is nn.Linear  # a subclass (quantized, ...) keeps its own forward
            and "forward" not in base.__dict__  # nor a patched instance (accelerate's hooks)
            and not (base._forward_hooks or base._forward_pre_hooks)
            and not (module_hooks._global_forward_hooks or module_hooks._global_forward_pre_hooks)
            and (isinstance(self.dropout, nn.Identity) or not self.dropout.training)
            and x.dtype == base.weight.dtype == self.more.dtype
            and not self.more.batch_shape
            and st.k * st.p == self.in_features  # no padding
            and st.l * st.s == self.out_features  # no cropping
            and multiply.uses_expanded(self.more.blkdiag1)
            and not multiply._use_triton(x, self.more.blkdiag1, self.more.blkdiag2)
            and not torch.is_autocast_enabled(x.device.type)
        )

    @torch.no_grad()
    def merged_weight(self) -> torch.Tensor:
        """``W + ΔW`` in the base weight's layout and dtype (nothing is changed)."""
        weight = self.base_layer.weight
        return weight + self.delta_weight().to(weight.dtype)

    @torch.no_grad()
    def merge(self, safe_merge: bool = False) -> None:
        """``W <- W + ΔW``; with ``safe_merge`` the result is checked for NaN/inf first."""
        if self.merged:
            return
        merged = self.merged_weight()
        if safe_merge and not bool(torch.isfinite(merged).all()):
            raise ValueError("safe_merge: merging this adapter produces NaN or inf weights; not merged")
        self._original_weight = self.base_layer.weight.detach().clone()
        self.base_layer.weight.copy_(merged)
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Restore the base weight exactly as it was before :meth:`merge`."""
        if not self.merged:
            return
        self.base_layer.weight.copy_(self._original_weight)
        self._original_weight = None
        self.merged = False

    def extra_repr(self) -> str:
        return f"merged={self.merged}, disabled={self.disabled}"
