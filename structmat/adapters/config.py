"""``MoReConfig``: a PEFT config (``peft_type="MORE"``), validated, saved as ``adapter_config.json``."""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from peft.config import PeftConfig

from ..checks import check_positive_int
from ..monarch.structure import LAYOUTS
from .compat import config_dict_from_any
from .peft_registration import more_peft_type


@dataclass
class MoReConfig(PeftConfig):
    """Settings of a MoRe adapter, with PEFT's ``LoraConfig`` names where they overlap.

    Attributes:
        target_modules: layer names (a module matches when its dotted name equals an entry or
            ends with ``"." + entry``), a regex that must ``fullmatch`` the name, ``"all-linear"``
            (every ``nn.Linear``/``Conv1D`` but the output head), or ``None``: the default of the
            architecture (PEFT's LoRA table: ``query``/``value`` for BERT, ``q_proj``/``v_proj``
            for Llama, ...).
        exclude_modules: names or a regex of layers never to adapt.
        modules_to_save: modules trained in full and saved with the adapter (a classifier head).
            PEFT's task models add the head themselves (``task_type="SEQ_CLS"``);
            :func:`~structmat.adapters.apply_more` takes ``modules_to_save="auto"`` for that.
        layers_to_transform, layers_pattern: adapt only these layer indices (PEFT's meaning).
        structure: the family of the update ``ΔW``, any registered one (:func:`structmat.structures`):
            ``"monarch"`` (MoRe, the default), ``"lowrank"`` (LoRA's ``B @ A`` through the same
            layer: the fair baseline), ``"kronecker"`` (LoKr-like), or a family of your own.
        structure_options: further settings of the family (Kronecker: ``{"a_shape": [m1, n1]}``).
        nblocks: Monarch blocks per factor (MoRe's default 4).
        rank: MoRe's block rank (``blk_r``): ``rank * (in + out)`` parameters per layer, those of
            a LoRA of that rank; for ``"lowrank"``, the LoRA rank.
        rank_pattern, nblocks_pattern: per-layer overrides, ``{regex or name suffix: value}``.
        dropout: dropout probability of the adapter's branch.
        dropout_position: ``"input"`` (as LoRA, the default): ``base(x) + update(dropout(x))``;
            ``"output"`` (the MoRe reference's): ``base(x) + dropout(update(x))``.
        layout: Monarch block sizes when a layer's sizes do not divide by ``nblocks``:
            ``"structmat"`` or ``"reference"`` (the MoRe reference code's).
        init_weights: ``True`` (the update starts at zero: the adapted model computes what the
            base did), ``False`` (random non-zero factors: for tests, as PEFT's option), or
            ``"projection"``: the update starts at the best approximation ``M`` of each weight in
            its structure (the family's fit: optimal, or within 1.0003x of it where Monarch's
            ``"auto"`` takes the randomized path on very wide blocks) and the frozen weight
            becomes ``W - M`` (PiSSA's idea).
        num_labels, base_model_class: what :func:`~structmat.adapters.from_pretrained` needs to
            rebuild the base model of a classifier (filled in when the adapter is created).

    Unknown keys of a config saved by a newer version are dropped with a warning on load (PEFT's
    rule).
    """

    target_modules: list[str] | str | None = field(default=None)
    exclude_modules: list[str] | str | None = field(default=None)
    modules_to_save: list[str] | None = field(default=None)
    layers_to_transform: list[int] | int | None = field(default=None)
    layers_pattern: list[str] | str | None = field(default=None)
    target_parameters: list[str] | None = field(default=None)  # PEFT's field; MoRe adapts modules only
    structure: str = field(default="monarch")
    structure_options: dict = field(default_factory=dict)
    nblocks: int = field(default=4)
    rank: int = field(default=4)
    rank_pattern: dict = field(default_factory=dict)
    nblocks_pattern: dict = field(default_factory=dict)
    dropout: float = field(default=0.0)
    dropout_position: str = field(default="input")
    layout: str = field(default="structmat")
    init_weights: bool | str = field(default=True)
    num_labels: int | None = field(default=None)
    base_model_class: str | None = field(default=None)
    structmat_version: str = field(default="")

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = more_peft_type()
        if not self.structmat_version:
            from .. import __version__

            self.structmat_version = __version__
        check_positive_int("nblocks", self.nblocks)
        check_positive_int("rank", self.rank)
        from ..registry import get_structure

        get_structure(self.structure)  # a registered family (ValueError naming `structure` otherwise)
        if not isinstance(self.structure_options, dict) or not all(isinstance(k, str) for k in self.structure_options):
            raise TypeError(
                f"structure_options must be a dict of the family's settings, got {self.structure_options!r}"
            )
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be a number in [0, 1), got {self.dropout!r}")
        if self.dropout_position not in ("input", "output"):
            raise ValueError(f"dropout_position must be 'input' or 'output', got {self.dropout_position!r}")
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {self.layout!r}")
        if not (isinstance(self.init_weights, bool) or self.init_weights == "projection"):
            raise ValueError(f"init_weights must be True, False or 'projection', got {self.init_weights!r}")
        if self.target_parameters:
            raise ValueError(
                f"target_parameters is not supported by MoRe (it adapts linear layers), got {self.target_parameters!r}"
            )
        for arg in ("target_modules", "exclude_modules"):
            setattr(self, arg, _module_spec(arg, getattr(self, arg)))
        if self.modules_to_save == "auto" or (
            isinstance(self.modules_to_save, (list, tuple)) and "auto" in self.modules_to_save
        ):
            raise ValueError(
                "modules_to_save='auto' is an argument of apply_more (it resolves to the model's task head); in a "
                "MoReConfig give the module names, or task_type (PEFT's task models add their head)"
            )
        modules = _module_spec("modules_to_save", self.modules_to_save)
        self.modules_to_save = [modules] if isinstance(modules, str) else modules
        for name in ("rank_pattern", "nblocks_pattern"):
            pattern = getattr(self, name)
            if not isinstance(pattern, dict):
                raise TypeError(f"{name} must be a dict {{layer name or regex: int}}, got {type(pattern).__name__}")
            for key, value in pattern.items():
                if not isinstance(key, str):
                    raise TypeError(f"{name} keys must be strings, got {key!r}")
                _check_regex(f"{name} key", key)
                check_positive_int(f"{name}[{key!r}]", value)
        if self.num_labels is not None:
            check_positive_int("num_labels", self.num_labels)

    # -- PEFT's serialisation, with sets as sorted lists (JSON) ---------------------------------
    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key, value in data.items():
            if isinstance(value, (set, frozenset)):
                data[key] = sorted(value)
        data["peft_type"] = str(getattr(self.peft_type, "value", self.peft_type))
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MoReConfig:
        """A config from its saved dict; keys this version does not know are dropped with a
        warning (PEFT's rule), configs written by structmat before MoRe became a PEFT method are
        converted (:mod:`structmat.adapters.compat`)."""
        return cls.from_peft_type(**config_dict_from_any(data, set(cls.__dataclass_fields__)))

    def value_for(self, name: str, module_name: str) -> int:
        """``rank`` or ``nblocks`` for layer ``module_name``: the first matching pattern's value
        (PEFT's rule: a key matches a name that ends with it), else the default."""
        pattern = getattr(self, f"{name}_pattern")
        for key, value in pattern.items():
            if re.match(rf"(.*\.)?({key})$", module_name):
                return value
        return getattr(self, name)

    def settings_for(self, module_name: str) -> dict[str, Any]:
        """The update's settings for layer ``module_name`` (patterns applied): what
        :func:`structmat.adapters.updates.hparams` turns into the family's hyper-parameters."""
        return {
            "rank": self.value_for("rank", module_name),
            "nblocks": self.value_for("nblocks", module_name),
            "layout": self.layout,
            "structure_options": dict(self.structure_options),
        }

    def resolve_base_path(self) -> None:
        """Record a local base-model folder as an absolute path (a relative one would be resolved
        against whichever folder the adapter is loaded from)."""
        path = self.base_model_name_or_path
        if isinstance(path, str) and path and os.path.isdir(path) and not os.path.isabs(path):
            self.base_model_name_or_path = os.path.abspath(path)


def _check_regex(what: str, text: str) -> None:
    try:
        re.compile(text)
    except re.error as err:
        raise ValueError(f"{what} {text!r} is not a valid regular expression: {err}") from None


def _module_spec(arg: str, value: Any) -> str | list[str] | None:
    """``None``, a regex string, or a list of names (a tuple or set becomes a sorted list, so that
    the config saves as JSON); anything else raises naming ``arg``."""
    if value is None:
        return None
    if isinstance(value, str):
        _check_regex(arg, value)
        return value
    if isinstance(value, (list, tuple, set, frozenset)) and all(isinstance(v, str) for v in value):
        if not value:
            raise ValueError(f"{arg} must not be empty (None means the default)")
        return sorted(value) if isinstance(value, (set, frozenset)) else list(value)
    raise TypeError(f"{arg} must be None, a string or a list of strings, got {value!r}")
