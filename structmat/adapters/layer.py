"""``MoReLinear``: a frozen linear layer plus named structured updates, a PEFT ``BaseTunerLayer``.

``forward(x) = base(x) + Σ_active update[a](dropout[a](x))``, where ``update[a]`` is a structured
matrix ``ΔW`` of shape ``(out, in)`` (a :class:`~structmat.Monarch` for MoRe, a
:class:`~structmat.LowRank` for the LoRA baseline; :mod:`.updates`), zero at init, so the adapted
layer starts equal to the base layer. MoRe has no ``alpha`` scaling.

What PEFT's own layers do not, and this one does:

- **The fused path.** For a plain ``nn.Linear`` base in one dtype with one active update that is a
  product of two block-diagonal factors (Monarch, or low rank as Monarch with one block), the
  base and the update run as one autograd node (:mod:`structmat.monarch.dispatch`).
- **Exact unmerge.** ``merge`` gives the base layer a new weight ``W + ΔW`` and keeps the
  original object aside; ``unmerge`` puts that very object back, bit for bit. A weight tied to
  other modules (``lm_head`` and the input embeddings) stays as it was for them. Quantized
  weights (bitsandbytes 4/8-bit, torchao) are dequantized, ``ΔW`` added, and requantized into the
  same type through PEFT's quantization backends (:mod:`.quantized`); the original quantized
  weight comes back on ``unmerge``. A parametrized weight (``weight_norm``) gets ``+ ΔW`` as one
  more parametrization; a weight sharded by FSDP2 is written shard by shard in place.
- **Projection init** (``init_weights="projection"``): the update starts at the best
  approximation ``M`` of the weight and the frozen weight becomes ``W - M``; the original ``W``
  is kept, so disabling, deleting or loading gives it back exactly.
- **Checked loads.** Adapter tensors that are NaN or infinite are refused when loaded
  (:func:`allow_nonfinite_weights` turns that off).
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import warnings
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from peft.tuners.tuners_utils import BaseTunerLayer, check_adapters_to_merge
from torch import nn
from torch.nn.utils import parametrize

from ..base import StructuredLinear
from ..monarch.dispatch import MultiplyPath, select_path
from ..monarch.multiply import run_path
from .quantized import QuantizedWeight, quantized_weight
from .sharding import full_tensor, is_sharded, shard_like
from .updates import dense, frozen_copy, new_update, projection_update

_allow_nonfinite: contextvars.ContextVar[bool] = contextvars.ContextVar("structmat_allow_nonfinite", default=False)
_NAME_MAX = 255  # bytes in a file name on the common file systems (an adapter name becomes a folder)


def nonfinite_allowed() -> bool:
    """Whether adapter tensors holding NaN or inf load here (inside :func:`allow_nonfinite_weights`)."""
    return _allow_nonfinite.get()


@contextlib.contextmanager
def allow_nonfinite_weights() -> Iterator[None]:
    """``with allow_nonfinite_weights(): ...`` loads adapters whose tensors hold NaN or inf
    (refused otherwise: such a file is corrupt or forged, and the model would compute NaN)."""
    token = _allow_nonfinite.set(True)
    try:
        yield
    finally:
        _allow_nonfinite.reset(token)


def is_linear(module: nn.Module) -> bool:
    """``nn.Linear`` (quantized subclasses too) or transformers' GPT-2-style ``Conv1D``."""
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"


def base_shape(base: nn.Module) -> tuple[int, int]:
    """``(in_features, out_features)`` of an ``nn.Linear`` (quantized ones included: their sizes,
    not their packed weight's) or a transformers ``Conv1D``; any other layer raises ``TypeError``."""
    if isinstance(base, nn.Linear):
        return base.in_features, base.out_features
    weight = getattr(base, "weight", None)
    if type(base).__name__ == "Conv1D" and isinstance(weight, torch.Tensor) and weight.dim() == 2:
        in_f, out_f = weight.shape  # Conv1D stores (in, out): y = x @ W + b
        return in_f, out_f
    raise TypeError(
        f"base_layer must be an nn.Linear or a transformers Conv1D, got {type(base).__name__}: MoRe adapts "
        f"linear layers only"
    )


def check_adapter_name(name: object) -> str:
    """An adapter name becomes a ``ModuleDict`` key and, when saved, a folder name: a non-empty
    string of at most 255 bytes without ``.``, ``/``, ``\\`` or NUL, and not an attribute of
    ``nn.ModuleDict`` (``"update"``, ``"keys"``, ``"train"``, ...)."""
    if not isinstance(name, str) or not name or any(c in name for c in "./\\\0"):
        raise ValueError(f"adapter_name must be a non-empty string without '.', '/', '\\\\' or NUL, got {name!r}")
    if len(name.encode("utf-8", "surrogatepass")) > _NAME_MAX or len(os.fsencode(name)) > _NAME_MAX:
        raise ValueError(f"adapter_name is {len(name.encode())} bytes long; a folder name takes at most {_NAME_MAX}")
    if hasattr(nn.ModuleDict(), name):  # an instance: "training" too
        raise ValueError(f"adapter_name {name!r} is an attribute of nn.ModuleDict (it cannot be a key); choose another")
    return name


class MoReLayer(BaseTunerLayer):
    """The PEFT tuner-layer part of :class:`MoReLinear` (adapter bookkeeping)."""

    adapter_layer_names = ("more_update",)
    other_param_names = ("more_dropout", "more_init", "more_dropout_position", "more_structure")

    def __init__(self, base_layer: nn.Module, **kwargs: Any) -> None:
        self.base_layer = base_layer
        self.more_update = nn.ModuleDict()  # name -> StructuredLinear (out, in)
        self.more_dropout = nn.ModuleDict()  # name -> nn.Dropout | nn.Identity
        self.more_init = nn.ModuleDict()  # name -> frozen M at init (init_weights="projection")
        self.more_dropout_position: dict[str, str] = {}
        self.more_structure: dict[str, str] = {}
        self._disable_adapters = False
        self.merged_adapters: list[str] = []
        self.kwargs = kwargs
        self.in_features, self.out_features = base_shape(base_layer)
        self.is_conv1d = not isinstance(base_layer, nn.Linear)
        self.quantized: QuantizedWeight | None = quantized_weight(base_layer, kwargs.get("quantization_kwargs") or {})
        self._kept: dict[str, Any] = {}  # "unmerged": the weight before merge; "original": W of a projection init

    # -- adapters ---------------------------------------------------------------------------------
    def update_layer(
        self,
        adapter_name: str,
        *,
        structure: str,
        settings: Mapping[str, Any],
        dropout: float = 0.0,
        dropout_position: str = "input",
        init_weights: bool | str = True,
        inference_mode: bool = False,
        update: StructuredLinear | None = None,
    ) -> None:
        """Add adapter ``adapter_name``: a fresh update of family ``structure`` (or ``update``) with
        the family's hyper-parameters from ``settings`` (``rank``, ``nblocks``, ``layout``,
        ``structure_options``: :func:`.updates.hparams`), its dropout, and for
        ``init_weights="projection"`` the projection of the weight (the layer's only adapter)."""
        check_adapter_name(adapter_name)
        if adapter_name in self.more_update:
            raise ValueError(f"this layer already has an adapter named {adapter_name!r}")
        projection = init_weights == "projection"
        if projection or self.more_init:
            if self.more_update:
                raise ValueError(
                    "init_weights='projection' makes the base weight the residual W - M: such an adapter must be the "
                    f"layer's only one (this layer has {sorted(self.more_update)})"
                )
            if projection and self.quantized is not None:
                raise TypeError(
                    f"init_weights='projection' rewrites the base weight, which a quantized "
                    f"{type(self.base_layer).__name__} cannot hold as W - M; use init_weights=True"
                )
        weight = self.base_layer.weight
        device = weight.device
        # the base weight's float dtype (PEFT's cast_adapter_dtype then upcasts half precision to
        # float32, as for LoRA); float32 beside a quantized weight
        dtype = weight.dtype if weight.is_floating_point() and self.quantized is None else torch.float32
        if update is None and projection:
            w = weight.detach() if not self.is_conv1d else weight.detach().T  # (out, in)
            update = projection_update(structure, w, settings)
        elif update is None:
            update = new_update(
                structure, self.in_features, self.out_features, settings, zero=init_weights is True,
                device=device if device.type != "meta" else torch.device("cpu"), dtype=dtype,
            )  # fmt: skip
        self.more_update[adapter_name] = update
        drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.more_dropout[adapter_name] = drop.train(self.training)
        self.more_dropout_position[adapter_name] = dropout_position
        self.more_structure[adapter_name] = structure
        if projection:
            self.more_init[adapter_name] = frozen_copy(update)
            self._kept["original"] = self.base_layer.weight
            self._set_residual()
        self.set_adapter(self.active_adapters, inference_mode=inference_mode)

    @torch.no_grad()
    def _set_residual(self) -> None:
        """Base weight := ``W - M`` from the kept original ``W`` and the init ``M`` (one rounding,
        the same each time: a load rebuilds the residual the saved model had)."""
        (name,) = self.more_init
        original = self._kept["original"]
        m = self._in_weight_layout(self.more_init[name].to_dense()).to(original.dtype)
        self.base_layer.weight = nn.Parameter(original.detach() - m, requires_grad=False)

    def delete_adapter(self, adapter_name: str) -> None:
        if adapter_name in self.merged_adapters:
            raise ValueError(f"adapter {adapter_name!r} is merged into the base weight; unmerge() first")
        if adapter_name in self.more_init:  # the base weight is W again
            self.base_layer.weight = self._kept.pop("original")
        self.more_dropout_position.pop(adapter_name, None)
        self.more_structure.pop(adapter_name, None)
        super().delete_adapter(adapter_name)

    def restore_original_weight(self) -> None:
        """For a projection-initialised adapter: put the original ``W`` back (``unload``)."""
        if "original" in self._kept:
            self.base_layer.weight = self._kept.pop("original")
            self.more_init.clear()

    # -- ΔW -----------------------------------------------------------------------------------------
    def get_delta_weight(self, adapter_name: str) -> torch.Tensor:
        """``ΔW`` of ``adapter_name`` in the base weight's layout (``(out, in)``, Conv1D ``(in, out)``),
        in the update's dtype; a sharded update (FSDP2) is gathered (every process calls)."""
        update = self.more_update[adapter_name]
        if any(is_sharded(p) for p in update.parameters()):  # FSDP2, outside forward: the whole parameters
            return self._in_weight_layout(dense(update, transform=lambda t: full_tensor(t.detach())))
        return self._in_weight_layout(update.to_dense())

    def _in_weight_layout(self, dense: torch.Tensor) -> torch.Tensor:  # (out, in) -> the base weight's layout
        return dense.T if self.is_conv1d else dense

    def supports_lora_conversion(self, adapter_name: str = "default") -> bool:
        return adapter_name in self.more_update and not self.more_init

    # -- loading --------------------------------------------------------------------------------
    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing, unexpected, errors):
        own = [k for k in state_dict if k.startswith(prefix + "more_update.") or k.startswith(prefix + "more_init.")]
        if not nonfinite_allowed():
            bad = [k for k in own if torch.is_tensor(state_dict[k]) and not _all_finite(state_dict[k])]
            if bad:
                raise ValueError(
                    f"adapter tensors {bad[:3]} hold NaN or inf: the file is corrupt or forged; nothing of this layer "
                    f"was loaded (structmat.adapters.allow_nonfinite_weights() loads it anyway)"
                )
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing, unexpected, errors)
        if self.more_init and any(k.startswith(prefix + "more_init.") for k in own):
            self._set_residual()  # the residual of the M that was saved

    def _apply(self, fn, recurse=True):
        """``.to()`` / ``.half()`` / ``.cuda()``: the kept weights follow the base weight."""
        super()._apply(fn, recurse)
        weight = self.base_layer.weight
        for kept in self._kept.values():  # plain weights (a quantized one is kept with its state, as it was)
            if isinstance(kept, torch.Tensor) and type(kept) in (torch.Tensor, nn.Parameter):
                if kept.device != weight.device or (kept.is_floating_point() and kept.dtype != weight.dtype):
                    kept.data = kept.data.to(device=weight.device, dtype=weight.dtype)
        return self


def _all_finite(t: torch.Tensor) -> bool:
    t = full_tensor(t)
    return bool(torch.isfinite(t).all()) if t.is_floating_point() or t.is_complex() else True


class MoReLinear(nn.Module, MoReLayer):
    """A frozen ``nn.Linear`` / ``Conv1D`` (or a quantized linear layer) with MoRe updates.

    Built by :class:`~structmat.adapters.MoReModel` (``get_peft_model``, ``apply_more``); see the
    module doc. ``fused = False`` turns the fused frozen+update node off (same values and gradients).
    """

    fused: bool = True

    def __init__(
        self,
        base_layer: nn.Module,
        adapter_name: str = "default",
        *,
        structure: str = "monarch",
        settings: Mapping[str, Any] | None = None,
        nblocks: int = 4,
        rank: int = 4,
        quantization_kwargs: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """``MoReLinear(nn.Linear(768, 768), rank=2)`` wraps one layer by hand (``MoReModel``
        passes ``settings``, the adapter config's for this layer, instead of ``nblocks``/``rank``);
        ``kwargs``: the rest of :meth:`update_layer` (``dropout``, ``init_weights``, ...)."""
        super().__init__()
        MoReLayer.__init__(self, base_layer, quantization_kwargs=quantization_kwargs)
        self._active_adapter = adapter_name
        if settings is None:
            settings = {"rank": rank, "nblocks": nblocks, "layout": "structmat", "structure_options": {}}
        self.update_layer(adapter_name, structure=structure, settings=settings, **kwargs)

    @property
    def update(self) -> StructuredLinear:
        """The update of the active adapter (``more_update[name]``; one adapter active)."""
        active = [a for a in self.active_adapters if a in self.more_update]
        if len(active) != 1:
            raise AttributeError(f"update needs exactly one active adapter here, the layer has {active}")
        return self.more_update[active[0]]

    # -- forward ------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.disable_adapters:
            if self.merged:
                self.unmerge()
            return self._add_init(self.base_layer(x, *args, **kwargs), x, self.more_init)
        if self.merged:
            return self.base_layer(x, *args, **kwargs)
        active = [a for a in self.active_adapters if a in self.more_update]
        if len(active) == 1 and not args and not kwargs:
            fused = self._fused(x, active[0])
            if fused is not None:
                return fused
        result = self.base_layer(x, *args, **kwargs)
        if self.quantized is not None:
            result = self.quantized.backend.maybe_clone_base_result(result)
        for name in active:
            update, dropout = self.more_update[name], self.more_dropout[name]
            xin = x.to(update.dtype) if x.dtype != update.dtype and not torch.is_autocast_enabled(x.device.type) else x
            if self.more_dropout_position[name] == "output" and isinstance(dropout, nn.Dropout) and dropout.training:
                result = result + dropout(update(xin)).to(result.dtype)  # the MoRe reference's placement
            else:
                result = update.addmm(result, dropout(xin))  # result + update, the add fused
        inactive_init = {n: m for n, m in self.more_init.items() if n not in active}
        return self._add_init(result, x, inactive_init)

    def _add_init(self, result: torch.Tensor, x: torch.Tensor, inits) -> torch.Tensor:
        """``(W - M) x + M x = W x`` for projection-initialised adapters that do not compute now."""
        for init in inits.values():
            result = init.addmm(result, x.to(init.dtype))
        return result

    def _fused(self, x: torch.Tensor, name: str) -> torch.Tensor | None:
        """The base layer and update ``name`` in one autograd node, or ``None`` when that path
        does not apply (see :func:`structmat.monarch.dispatch.base_fusable`)."""
        if not self.fused or self.more_init or self.quantized is not None:
            return None
        factors = self.more_update[name].monarch_factors()
        if factors is None:
            return None
        dropout = self.more_dropout[name]
        p = dropout.p if isinstance(dropout, nn.Dropout) and dropout.training else 0.0
        base = self.base_layer
        if select_path(x, *factors, base=base, dropout=p) is not MultiplyPath.EXPANDED_WITH_BASE:
            return None
        return run_path(
            MultiplyPath.EXPANDED_WITH_BASE, x, *factors, weight=base.weight, bias=base.bias, save_middle=False
        )

    # -- merge ---------------------------------------------------------------------------------------
    @torch.no_grad()
    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        """Fold ``ΔW`` of ``adapter_names`` (default: the active adapters) into the base weight.

        Everything is computed and checked before the layer changes: a weight on the meta device
        (no values), a quantized weight whose type cannot be requantized, and with ``safe_merge``
        a merged weight that is not finite, raise and leave the layer as it was. See the module
        doc for what happens to the original weight.
        """
        names = [n for n in check_adapters_to_merge(self, adapter_names) if n in self.more_update]
        if not names:
            return
        base = self.base_layer
        weight = base.weight
        where = f"{type(base).__name__}(in_features={self.in_features}, out_features={self.out_features})"
        if weight.device.type == "meta" or any(
            p.device.type == "meta" for n in names for p in self.more_update[n].parameters()
        ):
            raise ValueError(f"cannot merge into {where} on the meta device: its weights have no values")
        delta = sum(self.get_delta_weight(n) for n in names)
        if self.quantized is not None:
            merged = self.quantized.merged(base, delta)  # requantized, checked; nothing changed yet
            if safe_merge and not _all_finite(self.quantized.dequantize_weight(merged, base)):
                raise ValueError(f"safe_merge: merging {names} gives NaN or inf weights in {where}; not merged")
            if not self.merged:
                self._kept["unmerged"] = self.quantized.keep(base)
            self.quantized.install(base, merged)
        else:
            delta = shard_like(delta.to(weight.dtype), weight)
            new = weight + delta
            if safe_merge and not _all_finite(new):
                raise ValueError(f"safe_merge: merging {names} gives NaN or inf weights in {where}; not merged")
            if is_sharded(weight):  # FSDP2 owns the Parameter: write this process's shard in place
                if not self.merged:
                    self._kept["unmerged_shard"] = weight.detach().to_local().clone()
                weight.detach().to_local().copy_(new.to_local())
            elif parametrize.is_parametrized(base, "weight"):
                parametrize.register_parametrization(base, "weight", AddDelta(delta))
            else:
                if not self.merged:
                    self._kept["unmerged"] = weight
                base.weight = nn.Parameter(new, requires_grad=weight.requires_grad)
        self.merged_adapters.extend(names)

    @torch.no_grad()
    def unmerge(self) -> None:
        """Put the weight from before :meth:`merge` back (the very same object)."""
        if not self.merged:
            warnings.warn("Already unmerged. Nothing to do.", stacklevel=2)
            return
        base = self.base_layer
        if "unmerged_shard" in self._kept:
            base.weight.detach().to_local().copy_(self._kept.pop("unmerged_shard"))
        elif "unmerged" in self._kept:
            kept = self._kept.pop("unmerged")
            if self.quantized is not None:
                self.quantized.restore(base, kept)
            else:
                base.weight = kept
        else:  # parametrized: drop the AddDelta parametrizations merge() appended
            for _ in self.merged_adapters:
                del base.parametrizations.weight[-1]
        self.merged_adapters = []

    @torch.no_grad()
    def fold_merge(self) -> None:
        """Make a merge permanent (``merge_and_unload``): a parametrized weight becomes a plain
        one holding ``W + ΔW``, and the kept original is dropped."""
        self._kept.pop("unmerged", None)
        self._kept.pop("unmerged_shard", None)
        if self.merged and parametrize.is_parametrized(self.base_layer, "weight"):
            parametrize.remove_parametrizations(self.base_layer, "weight", leave_parametrized=True)

    @property
    def unmerged_weight(self) -> torch.Tensor:
        """The base weight from before :meth:`merge` (else the base weight)."""
        kept = self._kept.get("unmerged")
        return kept if isinstance(kept, torch.Tensor) else self.base_layer.weight

    def __repr__(self) -> str:
        return "more." + super().__repr__()

    def extra_repr(self) -> str:
        parts = [f"active_adapters={self.active_adapters}", f"merged={self.merged}"]
        if self.quantized is not None:
            parts.append(f"quantized={self.quantized.backend.backend_name!r}")
        return ", ".join(parts)


class AddDelta(nn.Module):
    """The parametrization ``W -> W + delta``: a merged adapter on a parametrized weight."""

    def __init__(self, delta: torch.Tensor):
        super().__init__()
        self.register_buffer("delta", delta, persistent=False)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + self.delta


__all__ = ["AddDelta", "MoReLayer", "MoReLinear", "allow_nonfinite_weights", "base_shape", "check_adapter_name"]
