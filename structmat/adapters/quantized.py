"""Quantized base layers (bitsandbytes 4/8-bit, torchao weight-only): merge by dequantize, add ΔW,
requantize into the same type; the original quantized weight comes back on unmerge.

Built on PEFT's quantization backends (``peft.utils.quantization_utils``), which know how each
library dequantizes and requantizes. What we add:

- **Nothing changes until everything worked.** The requantized weight is made on a scratch copy
  of the layer (its own parameter dict and 8-bit state) and checked to be of the original type;
  only then does it replace the layer's weight. A merge never changes a module's type or dtype.
- **Exact unmerge.** The original weight object (and bitsandbytes' 8-bit state) is kept and put
  back, instead of a second lossy dequantize-subtract-requantize.
- **torchao models quantized with ``quantize_``** (no transformers quantizer to ask for the
  config): the weight-only configs are read off the weight (``Int8Tensor`` → ``Int8WeightOnlyConfig``,
  ``IntxUnpackedToInt8Tensor`` → ``IntxWeightOnlyConfig``) and accepted only if requantizing the
  layer's own weight with them gives the same type and block size back, within one step.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


class QuantizedWeight:
    """How to merge into one quantized base layer (see the module doc)."""

    def __init__(self, backend: Any, layer_type: str, merge_error: str | None = None, bits: int = 8):
        self.backend = backend
        self.layer_type = layer_type
        self.merge_error = merge_error  # why merging is refused, or None
        self.bits = bits

    def dequantize(self, base: nn.Module) -> torch.Tensor:
        """The base weight in float32, in the layer's layout ``(out, in)`` (``base`` unchanged).

        bitsandbytes repacks a 4-bit weight for its CPU kernel at the first inference call; that
        layout is unpacked on a copy first (PEFT's backend would read it as the original layout)."""
        state = getattr(base.weight, "quant_state", None)
        if getattr(state, "packing_format_for_cpu", False):
            from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse, dequantize_4bit

            data, state = _convert_weight_packed_for_cpu_inverse(base.weight.data, copy.deepcopy(state))
            return dequantize_4bit(data, state).float()
        return self.backend.get_base_weight(base).float()

    def merged(self, base: nn.Module, delta: torch.Tensor) -> nn.Module:
        """A scratch copy of ``base`` holding ``W + delta`` requantized (``base`` is not changed).

        Checked twice before anything changes: the dequantized ``W`` must compute what the layer
        computes, and the requantized weight must be ``W + delta`` up to one quantization."""
        if self.merge_error is not None:
            raise TypeError(self.merge_error)
        weight = self.dequantize(base)
        self._check_matches_layer(base, weight)
        target = weight + delta.float()
        scratch = _scratch_copy(base)
        attributes = dict(base.weight.__dict__)  # PEFT's 4-bit backend edits the weight's attributes
        try:
            self.backend.set_base_weight(_Owner(scratch), target.to(self.backend_dtype(base)))
        finally:
            base.weight.__dict__.clear()
            base.weight.__dict__.update(attributes)
        if type(scratch.weight) is not type(base.weight):  # noqa: E721 - exact type is the promise
            raise TypeError(
                f"requantizing the merged weight of {self.layer_type} gave a {type(scratch.weight).__name__}, not a "
                f"{type(base.weight).__name__}; not merged"
            )
        error = float(torch.linalg.matrix_norm(self.dequantize(scratch) - target) / torch.linalg.matrix_norm(target))
        if error > self.tolerance:
            raise RuntimeError(
                f"requantizing W + ΔW of {self.layer_type} gave a weight {error:.2g} (relative) away from it, more "
                f"than one quantization ({self.tolerance}); not merged"
            )
        return scratch

    @property
    def tolerance(self) -> float:
        """The largest relative (Frobenius) error of one quantization of this kind we accept:
        0.25 for 4 bits or fewer, 0.05 for 8 bits (a wrong layout is off by about 1)."""
        return 0.25 if self.bits <= 4 else 0.05

    def backend_dtype(self, base: nn.Module) -> torch.dtype:
        dtype = getattr(base, "compute_dtype", None)
        return dtype if isinstance(dtype, torch.dtype) and dtype.is_floating_point else torch.float32

    def _check_matches_layer(self, base: nn.Module, weight: torch.Tensor) -> None:
        """The dequantized ``weight`` must compute what ``base`` does (on a probe that requires
        grad: bitsandbytes repacks weights only for inference calls)."""
        probe = torch.randn(4, weight.shape[1], generator=torch.Generator().manual_seed(0)).to(weight.device)
        probe.requires_grad_(True)
        with torch.enable_grad():
            got = base(probe).detach().float()
        bias = getattr(base, "bias", None)
        expected = probe.detach() @ weight.T + (bias.detach().float() if bias is not None else 0)
        scale = float(expected.abs().max()) or 1.0
        if float((got - expected).abs().max()) > 0.05 * scale:
            raise RuntimeError(
                f"cannot merge into {self.layer_type}: its dequantized weight does not compute what the layer computes "
                f"(an unknown storage layout); not merged"
            )

    def dequantize_weight(self, scratch: nn.Module, base: nn.Module) -> torch.Tensor:
        return self.dequantize(scratch)

    def keep(self, base: nn.Module) -> tuple[Any, Any]:
        return base.weight, getattr(base, "state", None)

    def install(self, base: nn.Module, scratch: nn.Module) -> None:
        base.weight = scratch.weight
        if getattr(scratch, "state", None) is not None:
            base.state = scratch.state

    def restore(self, base: nn.Module, kept: tuple[Any, Any]) -> None:
        weight, state = kept
        base.weight = weight
        if state is not None:
            base.state = state


class _Owner:
    """What PEFT's ``set_base_weight`` expects of a tuner layer: ``get_base_layer()``."""

    def __init__(self, base: nn.Module):
        self.base_layer = base

    def get_base_layer(self) -> nn.Module:
        return self.base_layer


def _scratch_copy(base: nn.Module) -> nn.Module:
    """A shallow copy of ``base`` whose parameters, buffers and 8-bit state can be replaced
    without touching ``base``."""
    scratch = copy.copy(base)
    scratch._parameters = dict(base._parameters)
    scratch._buffers = dict(base._buffers)
    scratch._modules = dict(base._modules)
    if getattr(base, "state", None) is not None:
        scratch.state = copy.copy(base.state)
    return scratch


def quantized_weight(base: nn.Module, quantization_kwargs: dict[str, Any]) -> QuantizedWeight | None:
    """How to merge into ``base`` when its weight is quantized, else ``None``.

    ``quantization_kwargs``: PEFT's ``get_quantization_kwargs(model)`` (a transformers-quantized
    torchao model carries its config there)."""
    weight = getattr(base, "weight", None)
    plain = isinstance(weight, torch.Tensor) and type(weight) in (torch.Tensor, nn.Parameter)
    if plain and weight.is_floating_point():
        return None
    from peft.utils.quantization_utils import resolve_quantization_backend

    layer_type = f"{type(base).__name__} with a {type(weight).__name__} weight"
    bits = _bits(weight)
    kwargs = dict(quantization_kwargs)
    if _is_torchao(weight) and "get_apply_tensor_subclass" not in kwargs:
        config, why = torchao_config_of(base)
        kwargs["get_apply_tensor_subclass"] = (lambda: config) if config is not None else (lambda: None)
        backend = resolve_quantization_backend(base, **kwargs)
        error = None if config is not None else f"cannot merge into {layer_type}: {why}"
        return QuantizedWeight(backend, layer_type, error, bits)
    backend = resolve_quantization_backend(base, **kwargs)
    if backend is None:
        if plain:  # an integer weight in a plain layer: nothing knows how to merge into it
            return QuantizedWeight(
                _NoBackend(layer_type), layer_type, f"cannot merge into {layer_type} ({weight.dtype})"
            )
        return QuantizedWeight(
            _NoBackend(layer_type), layer_type, f"cannot merge into {layer_type}: no known way to dequantize it"
        )
    error = None if backend.supports_merge else f"cannot merge into {layer_type}: {backend.backend_name} has no merge"
    return QuantizedWeight(backend, layer_type, error, bits)


def _bits(weight: Any) -> int:
    """Bits per quantized number: 4 for bitsandbytes' 4-bit and torchao's int4 (or fewer), else 8."""
    if type(weight).__name__ == "Params4bit":
        return 4
    target = getattr(weight, "target_dtype", None)
    if isinstance(target, torch.dtype) and target in (getattr(torch, f"int{b}", None) for b in range(1, 5)):
        return 4
    return 8


class _NoBackend:
    backend_name = "unknown"

    def __init__(self, layer_type: str):
        self.layer_type = layer_type

    def get_base_weight(self, base: nn.Module) -> torch.Tensor:
        raise TypeError(f"cannot dequantize {self.layer_type}")

    def maybe_clone_base_result(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _is_torchao(weight: object) -> bool:
    try:
        from torchao.utils import TorchAOBaseTensor
    except ImportError:
        return False
    return isinstance(weight, TorchAOBaseTensor)


def torchao_config_of(base: nn.Module) -> tuple[Any, str]:
    """``(config, "")`` for a torchao weight-only layer whose config, read off the weight,
    requantizes the layer's own (dequantized) weight into the same type, block size and target
    dtype, to within one quantization step; else ``(None, why)``."""
    weight = base.weight
    name = type(weight).__name__
    try:
        config = _guess_torchao_config(weight)
    except ImportError as err:  # pragma: no cover - torchao without these configs
        return None, f"torchao has no config for {name} ({err})"
    if config is None:
        return None, (
            f"the torchao config of its {name} weight is not known (quantized with transformers' TorchAoConfig, "
            f"PEFT's backend would read it; weight-only Int8Tensor and IntxUnpackedToInt8Tensor are read off the "
            f"weight)"
        )
    from torchao.quantization import quantize_

    probe = nn.Linear(base.in_features, base.out_features, bias=False, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        probe.weight.copy_(weight.dequantize())
    quantize_(probe, config)
    again = probe.weight
    step = float(weight.scale.abs().max()) if isinstance(getattr(weight, "scale", None), torch.Tensor) else 0.0
    same = (
        type(again) is type(weight)
        and tuple(getattr(again, "block_size", ())) == tuple(getattr(weight, "block_size", ()))
        and getattr(again, "target_dtype", None) == getattr(weight, "target_dtype", None)
        and float((again.dequantize() - weight.dequantize()).abs().max()) <= 1.01 * step  # within one step
    )
    if not same:
        return None, f"requantizing its own {name} weight with {type(config).__name__} does not give it back"
    return config, ""


def _guess_torchao_config(weight: Any) -> Any:
    name = type(weight).__name__
    if name == "Int8Tensor" and getattr(weight, "act_quant_kwargs", None) is None:
        from torchao.quantization import Int8WeightOnlyConfig
        from torchao.quantization.granularity import PerRow

        block = list(weight.block_size)
        if block[0] == 1 and block[-1] == weight.shape[-1]:
            return Int8WeightOnlyConfig(granularity=PerRow())
        return Int8WeightOnlyConfig(group_size=block[-1])
    if name == "IntxUnpackedToInt8Tensor" and getattr(weight, "activation_quantization", None) is None:
        from torchao.quantization import IntxWeightOnlyConfig
        from torchao.quantization.granularity import PerAxis, PerGroup
        from torchao.quantization.quant_primitives import MappingType

        block = tuple(weight.block_size)
        granularity = PerAxis(0) if block[-1] == weight.shape[-1] else PerGroup(block[-1])
        zero = getattr(weight, "zero_point", None)
        mapping = MappingType.SYMMETRIC if zero is None or not bool(zero.any()) else MappingType.ASYMMETRIC
        return IntxWeightOnlyConfig(weight_dtype=weight.target_dtype, granularity=granularity, mapping_type=mapping)
    return None
