"""``MoReConfig``: the adapter's settings, validated, saved as ``adapter_config.json``."""

from __future__ import annotations

import dataclasses
import json
import warnings
from dataclasses import dataclass, field
from typing import Any

from .._checks import check_positive_int


@dataclass
class MoReConfig:
    """Settings of a MoRe adapter (names follow PEFT's ``LoraConfig`` where they overlap).

    Attributes:
        target_modules: layer names, a regex, ``"all-linear"`` or ``None`` (per-architecture
            default); see :mod:`structmat.adapters.targets`.
        exclude_modules: names or regex of layers never to wrap.
        modules_to_save: modules trained in full and saved with the adapter; ``"auto"`` =
            the classifier head of a sequence-classification model.
        nblocks: Monarch blocks per factor (MoRe's default 4).
        rank: block rank (MoRe's ``blk_r``); trainable params per layer ``rank*(in+out)``.
        dropout: dropout on the adapter's *input* (as LoRA): ``base(x) + monarch(dropout(x))``.
    """

    target_modules: str | list[str] | None = None
    exclude_modules: str | list[str] | None = None
    modules_to_save: str | list[str] | None = "auto"
    nblocks: int = 4
    rank: int = 4
    dropout: float = 0.0
    # filled in by apply_more: what the adapter was applied to
    resolved_targets: list[str] = field(default_factory=list)
    resolved_modules_to_save: list[str] = field(default_factory=list)
    base_model_type: str | None = None
    base_model_class: str | None = None
    target_shapes: dict[str, list[int]] = field(default_factory=dict)
    peft_type: str = "MORE"
    structmat_version: str = ""

    def __post_init__(self) -> None:
        check_positive_int("nblocks", self.nblocks)
        check_positive_int("rank", self.rank)
        if not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be a float in [0, 1), got {self.dropout!r}")
        if isinstance(self.target_modules, (tuple, set)):
            self.target_modules = sorted(self.target_modules)

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
