"""The LoRA baseline: a thin wrapper over ``peft.get_peft_model(LoraConfig(...))``.

Same target resolution as :func:`apply_more`, so MoRe and LoRA wrap exactly the same layers.
"""

from __future__ import annotations

from torch import nn

from ..checks import check_positive_float, check_positive_int
from .targets import TargetSpec, check_target_spec, resolve_modules_to_save, resolve_targets


def apply_lora(
    model: nn.Module,
    target_modules: TargetSpec = None,
    rank: int = 8,
    alpha: float | None = None,
    dropout: float = 0.0,
    *,
    exclude_modules: TargetSpec = None,
    modules_to_save: str | list[str] | None = "auto",
    init_lora_weights: bool | str = True,
) -> nn.Module:
    """PEFT LoRA on the layers :func:`apply_more` would wrap; returns the ``PeftModel``.

    ``alpha`` defaults to ``2 * rank`` (update scaling 2, a common choice). ``init_lora_weights``
    goes to PEFT's ``LoraConfig``:
    ``"pissa"`` starts LoRA at the weight's principal singular vectors with the residual frozen
    (the low-rank counterpart of ``MoReConfig(init="projection")``).
    """
    from peft import LoraConfig, get_peft_model

    from .api import unwrap_model

    unwrap_model(model)  # checks that model is a Module
    check_positive_int("rank", rank)
    if alpha is not None:
        check_positive_float("alpha", alpha)
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be a number in [0, 1), got {dropout!r}")
    check_target_spec("target_modules", target_modules)
    check_target_spec("exclude_modules", exclude_modules)
    saved = resolve_modules_to_save(model, modules_to_save)
    targets = resolve_targets(model, target_modules, exclude_modules, saved)
    config = LoraConfig(
        r=rank,
        lora_alpha=2 * rank if alpha is None else alpha,
        lora_dropout=dropout,
        target_modules=targets,
        modules_to_save=saved or None,
        fan_in_fan_out=any(type(model.get_submodule(t)).__name__ == "Conv1D" for t in targets),
        init_lora_weights=init_lora_weights,
    )
    return get_peft_model(model, config)
