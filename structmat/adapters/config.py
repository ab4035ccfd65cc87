"""``MoReConfig``: the adapter's settings, validated, saved as ``adapter_config.json``."""

from __future__ import annotations

import dataclasses
import json
import warnings
from dataclasses import dataclass, field
from typing import Any

from ..checks import check_positive_int
from ..monarch.structure import LAYOUTS


@dataclass
class MoReConfig:
    """Settings of a MoRe adapter (names follow PEFT's ``LoraConfig`` where they overlap).

    Attributes:
        target_modules: layer names, a regex, ``"all-linear"`` or ``None`` (per-architecture
            default); see :mod:`structmat.adapters.targets`.
        exclude_modules: names or regex of layers never to wrap.
        modules_to_save: modules trained in full and saved with the adapter; ``"auto"`` =
            the task head of a classification or question-answering model (``classifier``,
            ``score``, ``qa_outputs``), as PEFT's task types.
        nblocks: Monarch blocks per factor (MoRe's default 4).
        rank: block rank (MoRe's ``blk_r``); trainable params per layer ``rank*(in+out)``.
        dropout: dropout rate of the adapter's branch.
        dropout_position: ``"input"`` (as LoRA, the default): ``base(x) + monarch(dropout(x))``;
            ``"output"`` (the MoRe reference's): ``base(x) + dropout(monarch(x))``, which keeps an
            output-sized mask for backward (``out/in`` times the input's: 4x for 768 -> 3072) and
            cannot take the fused path while dropout is active.
        layout: Monarch block sizes when a layer's sizes do not divide by ``nblocks``:
            ``"structmat"`` or ``"reference"`` (the MoRe reference code's; see
            :meth:`structmat.MonarchShape.for_more`).
        init: ``"zero"`` (the update starts at zero, MoRe's) or ``"projection"``: the update
            starts at the best Monarch approximation ``M`` of each weight (:func:`fit_monarch`)
            and the frozen base weight becomes the residual ``W - M`` (PiSSA's idea, for
            Monarch), so the model computes the same at init while training starts along the
            weight's own structure. Such an adapter is the model's only one; it is saved with
            its ``M`` so that loading rebuilds the same residual.
        base_model_name_or_path: where the base model loads from (filled in from the model's
            ``name_or_path`` when known), for :func:`structmat.adapters.from_pretrained`.
        task_type: PEFT's task name (``"SEQ_CLS"``, ``"CAUSAL_LM"``, ...), filled in from the
            model's class when known.

    The remaining fields are filled in by :func:`~structmat.adapters.apply_more` on a copy (the
    config you pass is not modified) and saved with the adapter.
    """

    target_modules: str | list[str] | None = None
    exclude_modules: str | list[str] | None = None
    modules_to_save: str | list[str] | None = "auto"
    nblocks: int = 4
    rank: int = 4
    dropout: float = 0.0
    dropout_position: str = "input"
    layout: str = "structmat"
    init: str = "zero"
    base_model_name_or_path: str | None = None
    task_type: str | None = None
    # filled in by apply_more: what the adapter was applied to
    resolved_targets: list[str] = field(default_factory=list)
    resolved_modules_to_save: list[str] = field(default_factory=list)
    base_model_type: str | None = None
    base_model_class: str | None = None
    target_shapes: dict[str, list[int]] = field(default_factory=dict)
    num_labels: int | None = None
    peft_type: str = "MORE"
    structmat_version: str = ""

    def __post_init__(self) -> None:
        if self.peft_type != "MORE":
            raise ValueError(
                f"peft_type must be 'MORE' for a MoRe adapter config, got {self.peft_type!r}"
                + (" (a PEFT adapter: load it with peft.PeftModel.from_pretrained)" if self.peft_type else "")
            )
        check_positive_int("nblocks", self.nblocks)
        check_positive_int("rank", self.rank)
        if not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be a float in [0, 1), got {self.dropout!r}")
        if self.dropout_position not in ("input", "output"):
            raise ValueError(f"dropout_position must be 'input' or 'output', got {self.dropout_position!r}")
        if self.init not in ("zero", "projection"):
            raise ValueError(f"init must be 'zero' or 'projection', got {self.init!r}")
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {self.layout!r}")
        for arg in ("target_modules", "exclude_modules", "modules_to_save"):
            setattr(self, arg, _module_spec(arg, getattr(self, arg)))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MoReConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            warnings.warn(
                f"adapter config keys {unknown} are unknown to this structmat version and are ignored",
                stacklevel=2,
            )
        return cls(**{k: v for k, v in data.items() if k in known})


def _module_spec(arg: str, value: Any) -> str | list[str] | None:
    """``None``, a string, or a list of strings (a tuple or set becomes a list, a set sorted, so
    that the config saves as JSON); anything else raises ``TypeError`` naming ``arg``."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (list, tuple, set, frozenset)) and all(isinstance(v, str) for v in value):
        return sorted(value) if isinstance(value, (set, frozenset)) else list(value)
    raise TypeError(f"{arg} must be None, a string or a list of strings, got {value!r}")
