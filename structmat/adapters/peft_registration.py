"""MoRe as a PEFT method: the one place that touches PEFT's method registry.

PEFT (0.21) keeps its methods in a closed ``PeftType`` enum and refuses to register a name that is
not in it. We add ``MORE`` to that enum with ``aenum.extend_enum`` (the enum's own author's
library; a real member, so ``PeftType.MORE.value`` and every mapping keyed by ``PeftType`` work)
and then register through PEFT's public ``register_peft_method``. This is the compromise PEFT
forces: it relies on ``PeftType`` staying an ``Enum`` of strings and on the mapping tables of
``peft.mapping``. :func:`check_registration` verifies both after registering and fails loudly,
naming the PEFT version, if a future PEFT changes them.

Registration is idempotent: importing :mod:`structmat.adapters` does it once per process.
"""

from __future__ import annotations

import peft
from peft.utils import PeftType

PEFT_NAME = "more"  # PEFT's lower-case method name; PeftType.MORE, prefix "more_"
PREFIX = "more_"


class PeftRegistrationError(ImportError):
    """PEFT's method registry does not work the way structmat relies on (a newer PEFT?)."""


def more_peft_type() -> PeftType:
    """``PeftType.MORE``, added to PEFT's enum on first use."""
    if "MORE" not in PeftType.__members__:
        try:
            from aenum import extend_enum
        except ImportError as err:  # pragma: no cover - aenum is a dependency
            raise PeftRegistrationError("structmat.adapters needs aenum to register MoRe with PEFT") from err
        try:
            extend_enum(PeftType, "MORE", "MORE")
        except Exception as err:  # noqa: BLE001 - any failure here is the version problem we name
            raise PeftRegistrationError(
                f"cannot add MORE to peft.PeftType with peft {peft.__version__} ({err}); structmat supports the "
                f"PeftType enum of peft 0.21"
            ) from err
    return PeftType.MORE


def register(config_cls: type, model_cls: type) -> None:
    """Register MoRe with PEFT (idempotent), then :func:`check_registration`."""
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    peft_type = more_peft_type()
    if PEFT_TYPE_TO_CONFIG_MAPPING.get(peft_type) is not config_cls:
        from peft.utils import register_peft_method

        try:
            register_peft_method(name=PEFT_NAME, config_cls=config_cls, model_cls=model_cls, prefix=PREFIX)
        except Exception as err:  # noqa: BLE001
            raise PeftRegistrationError(
                f"peft {peft.__version__} refused to register MoRe ({type(err).__name__}: {err})"
            ) from err
    check_registration(config_cls, model_cls)


def check_registration(config_cls: type, model_cls: type) -> None:
    """Raise :class:`PeftRegistrationError` (naming the PEFT version) unless PEFT maps ``"MORE"``
    to our config, tuner and prefix the way ``get_peft_model`` and ``PeftModel.from_pretrained``
    look them up."""
    from peft import mapping

    wanted = {
        "PEFT_TYPE_TO_CONFIG_MAPPING": config_cls,
        "PEFT_TYPE_TO_TUNER_MAPPING": model_cls,
        "PEFT_TYPE_TO_PREFIX_MAPPING": PREFIX,
    }
    wrong = []
    for table, value in wanted.items():
        got = getattr(mapping, table, {}).get("MORE")  # as read back from an adapter_config.json
        if got is not value:
            wrong.append(f"{table}['MORE'] is {got!r}")
    if wrong:
        raise PeftRegistrationError(
            f"MoRe is not registered with peft {peft.__version__} as structmat expects: {'; '.join(wrong)}"
        )
