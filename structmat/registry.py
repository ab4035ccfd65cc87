"""The structure registry: every family of structured matrices registers here, once.

A family's entry (:class:`StructureFamily`) says what the rest of the library needs to know: its
module class, how to build a member for an ``(in_features, out_features)`` layer, the member's
parameter count and rank capacity, its fit (with ``fit_error``), its optimal error where one is
known independently of the fit, which members a study sweeps, and how it looks in figures.
:func:`structmat.optimal_error`, the rank-capacity study, the approximation curves, the
transforms table, the plots and ``structmat report`` read the registry and nothing else, so a
new family is one module and one :func:`register_structure` call (``docs/structures.md``).

**Members.** A member is given by keyword hyper-parameters ``hp``: ``rank=8`` for low rank,
``nblocks=4, rank=2`` for Monarch. Studies sweep a family's *variants* (the hyper-parameters a
budget does not choose: Monarch's ``nblocks``, Kronecker's ``a_shape``); within a variant a
budget picks the largest value of the family's ``size`` hyper-parameter (``rank``) whose
parameter count fits, so ``num_params`` must not decrease as ``size`` grows.

**Series labels.** A variant's label in tables and figures is ``name`` or ``name(key=value,
...)`` with tuples written ``AxB`` (``monarch(nblocks=4)``, ``kronecker(a_shape=16x16)``);
:func:`parse_label` reads one back, which is how a figure finds a series' style.

**Adapter hook.** :meth:`StructureFamily.build_update` is what a structure-generic adapter asks
for: a fresh trainable member of the family for an ``(in, out)`` layer, zero-initialised by the
family's ``zero_init`` so that the update starts at 0 and still receives gradients; its dense
update is ``module.to_dense()`` (``ΔW``, ``(out, in)``) and the adapted layer computes
``module.addmm(base(x), x)``. (The adapters do not use it yet.)
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .base import StructuredLinear
from .checks import check_bool, check_sequence
from .palette import PlotStyle

Hparams = dict[str, Any]
_NAME = re.compile(r"[a-z][a-z0-9_]*")
_LABEL = re.compile(r"([a-z][a-z0-9_]*)(?:\((.*)\))?")
_FAMILIES: dict[str, StructureFamily] = {}  # name -> entry, in registration order


def _one_variant(in_features: int, out_features: int) -> list[Hparams]:
    """The variants of a family that studies sweep as one: no hyper-parameter besides ``size``."""
    return [{}]


def _format_value(value: object) -> str:
    if isinstance(value, tuple) and value and all(isinstance(v, int) for v in value):
        return "x".join(map(str, value))
    return str(value)


def _parse_value(text: str) -> object:
    parts = text.split("x")
    if all(p.isdigit() for p in parts):
        return int(parts[0]) if len(parts) == 1 else tuple(int(p) for p in parts)
    return text


_CALLABLES = ("build", "num_params", "rank_capacity", "fit", "zero_init", "variants")


@dataclass(frozen=True, kw_only=True, eq=False)
class StructureFamily:
    """One family of structured matrices, as the library's studies and figures see it.

    Required:
        name: registry key and series-label prefix, lowercase (``"kronecker"``).
        label: display name in prose and tables (``"Kronecker"``).
        module: its :class:`~structmat.StructuredLinear` subclass.
        build: ``build(in_features, out_features, **hp, batch_shape=(), device=None, dtype=None)``,
            a random member (initialised like ``nn.Linear``).
        num_params: ``num_params(in_features, out_features, **hp)``, parameters of one member.
        rank_capacity: ``rank_capacity(in_features, out_features, **hp)``, the rank of a generic
            (random) member: the largest rank the member can have.
        fit: ``fit(W, **hp, **fit_options)`` of one ``(out, in)`` matrix, a module whose
            ``fit_error`` is its achieved ``||W - M||_F / ||W||_F``.
        zero_init: ``zero_init(module)``, in place and under ``no_grad``: ``module.to_dense()``
            becomes 0 while every parameter can still receive a gradient (LoRA's ``B = 0``).
        style: a :class:`~structmat.palette.PlotStyle`, or ``style(variant)`` returning one (or
            None: the figure picks one by position).

    Optional:
        optimal_error: ``optimal_error(W, **hp)``, the smallest relative error of the family,
            computed without the fitted factors (e.g. from singular values); None when unknown.
        size: the hyper-parameter a budget grows (default ``"rank"``); None: one member per
            variant.
        largest_size: ``largest_size(in_features, out_features, **variant)``, the largest useful
            ``size`` (the rule of :func:`structmat.checks.check_useful_rank`); needed with ``size``.
        variants: ``variants(in_features, out_features, **variant_options)``, the variants a
            study sweeps (hyper-parameter dicts without ``size``); default one, ``{}``.
        variant_options, fit_options: the study keywords this family takes, with their defaults
            (Monarch: ``{"nblocks": (2, 4, 8)}``; butterfly: ``{"butterfly_steps": 400}``).
        iterative: its fit is an iterative optimisation (slow, not guaranteed optimal);
            approximation curves leave it out unless asked for.
        fit_method: how the fit works, one phrase for reports.
        shape_type: a class whose instances name a member by themselves; ``optimal_error(W, obj)``
            then passes ``structure=obj`` to this family.
        examples: ``(in_features, out_features, hp)`` of small members for the test battery
            (:func:`structmat.testing.family_test_case`); ``hp`` may add ``batch_shape``.
        adapter_options: the adapter settings (fields of
            :class:`~structmat.adapters.MoReConfig`) this family's ``build`` and ``fit`` take
            besides ``size``: Monarch's ``("nblocks", "layout")``.
    """

    name: str
    label: str
    module: type
    build: Callable[..., StructuredLinear]
    num_params: Callable[..., int]
    rank_capacity: Callable[..., int]
    fit: Callable[..., StructuredLinear]
    zero_init: Callable[[StructuredLinear], None]
    style: PlotStyle | Callable[[Mapping[str, Any]], PlotStyle | None]
    optimal_error: Callable[..., torch.Tensor] | None = None
    size: str | None = "rank"
    largest_size: Callable[..., int] | None = None
    variants: Callable[..., list[Hparams]] = _one_variant
    variant_options: Mapping[str, Any] = field(default_factory=dict)
    fit_options: Mapping[str, Any] = field(default_factory=dict)
    iterative: bool = False
    fit_method: str = ""
    shape_type: type | None = None
    examples: tuple[tuple[int, int, Mapping[str, Any]], ...] = ()
    adapter_options: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
            raise ValueError(f"name must be lowercase letters, digits or '_' (a label prefix), got {self.name!r}")
        if not isinstance(self.label, str) or not self.label:
            raise TypeError(f"label must be a non-empty string, got {self.label!r}")
        if not (isinstance(self.module, type) and issubclass(self.module, StructuredLinear)):
            raise TypeError(f"module must be a StructuredLinear subclass, got {self.module!r}")
        for key in _CALLABLES:
            if not callable(getattr(self, key)):
                raise TypeError(f"{key} must be callable, got {getattr(self, key)!r}")
        for key in ("optimal_error", "largest_size"):
            if getattr(self, key) is not None and not callable(getattr(self, key)):
                raise TypeError(f"{key} must be callable or None, got {getattr(self, key)!r}")
        if not (isinstance(self.style, PlotStyle) or callable(self.style)):
            raise TypeError(f"style must be a PlotStyle or a function of the variant, got {self.style!r}")
        if self.size is not None and (not isinstance(self.size, str) or not self.size.isidentifier()):
            raise TypeError(f"size must be a hyper-parameter name or None, got {self.size!r}")
        if self.size is not None and self.largest_size is None:
            raise TypeError(f"largest_size must be given with size={self.size!r} (the largest useful {self.size})")
        for key in ("variant_options", "fit_options"):
            options = getattr(self, key)
            if not isinstance(options, Mapping) or not all(isinstance(k, str) for k in options):
                raise TypeError(f"{key} must be a mapping option name -> default, got {options!r}")
        if not isinstance(self.adapter_options, tuple) or not all(isinstance(k, str) for k in self.adapter_options):
            raise TypeError(f"adapter_options must be a tuple of setting names, got {self.adapter_options!r}")
        check_bool("iterative", self.iterative)
        if not isinstance(self.fit_method, str):
            raise TypeError(f"fit_method must be a string, got {self.fit_method!r}")
        if self.shape_type is not None and not isinstance(self.shape_type, type):
            raise TypeError(f"shape_type must be a class or None, got {self.shape_type!r}")
        if not isinstance(self.examples, tuple) or not all(
            isinstance(e, tuple) and len(e) == 3 and isinstance(e[2], Mapping) for e in self.examples
        ):
            raise TypeError(f"examples must be a tuple of (in_features, out_features, kwargs), got {self.examples!r}")

    # -- members ---------------------------------------------------------------------------
    def series_label(self, variant: Mapping[str, Any]) -> str:
        """``name`` or ``name(key=value, ...)``: how tables and figures call a variant."""
        if not variant:
            return self.name
        return f"{self.name}(" + ", ".join(f"{k}={_format_value(v)}" for k, v in variant.items()) + ")"

    def describe(self, hp: Mapping[str, Any]) -> str:
        """A member's hyper-parameters in words: ``"nblocks=4, rank 2"`` ("" when it has none)."""
        parts = [f"{k}={_format_value(v)}" for k, v in hp.items() if k != self.size]
        if self.size is not None and self.size in hp:
            parts.append(f"{self.size} {hp[self.size]}")
        return ", ".join(parts)

    def smallest(self, **variant: Any) -> Hparams:
        """The hyper-parameters of the variant's smallest member (``size`` 1)."""
        return dict(variant) if self.size is None else {**variant, self.size: 1}

    def largest_within_budget(self, in_features: int, out_features: int, budget: int, **variant: Any) -> Hparams | None:
        """The hyper-parameters of the variant's largest member with at most ``budget``
        parameters, or None when even its smallest member has more."""
        if self.size is None:
            return dict(variant) if self.num_params(in_features, out_features, **variant) <= budget else None
        lo, hi = 0, self.largest_size(in_features, out_features, **variant)  # the answer is in [lo, hi]
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self.num_params(in_features, out_features, **variant, **{self.size: mid}) <= budget:
                lo = mid
            else:
                hi = mid - 1
        return None if lo == 0 else {**variant, self.size: lo}

    def build_update(self, in_features: int, out_features: int, **kwargs: Any) -> StructuredLinear:
        """The adapter hook: a fresh member for an ``(in, out)`` layer (``kwargs``: its
        hyper-parameters, and ``batch_shape``/``device``/``dtype``), zero-initialised by
        ``zero_init``: its ``to_dense()`` (``ΔW``, ``(out, in)``) starts at 0 and its parameters
        train. An adapted layer computes ``module.addmm(base(x), x)``."""
        module = self.build(in_features, out_features, **kwargs)
        with torch.no_grad():
            self.zero_init(module)
        return module

    def style_for(self, variant: Mapping[str, Any]) -> PlotStyle | None:
        """The plot style of a variant (None: let the figure choose by position)."""
        return self.style if isinstance(self.style, PlotStyle) else self.style(variant)


# -- the registry --------------------------------------------------------------------------


def _option_names() -> set[str]:
    return {k for f in _FAMILIES.values() for k in (*f.variant_options, *f.fit_options)}


def register_structure(family: StructureFamily, *, replace: bool = False) -> StructureFamily:
    """Register ``family`` (one call): from now on ``structures()`` lists it, and the studies,
    plots and report include it. Returns ``family``. A name already registered is refused
    unless ``replace=True``. See :func:`registered` for a registration that undoes itself."""
    if not isinstance(family, StructureFamily):
        raise TypeError(f"family must be a StructureFamily, got {type(family).__name__}")
    check_bool("replace", replace)
    if family.name in _FAMILIES and not replace:
        raise ValueError(f"a structure named {family.name!r} is registered already (replace=True replaces it)")
    others = {k: f for k, f in _FAMILIES.items() if k != family.name}
    options = {k for f in others.values() for k in (*f.variant_options, *f.fit_options)}
    clash = ({family.name} & options) | ({*family.variant_options, *family.fit_options} & set(others))
    if clash:
        raise ValueError(f"family {family.name!r}: {sorted(clash)} would be both a family name and a study option")
    _FAMILIES[family.name] = family
    return family


def unregister_structure(name: str) -> StructureFamily:
    """Remove the family ``name`` from the registry and return its entry."""
    family = get_structure(name, "name")
    del _FAMILIES[family.name]
    return family


@contextlib.contextmanager
def registered(*families: StructureFamily) -> Iterator[None]:
    """Register ``families`` inside the ``with`` block only (what tests use: no global side effect)."""
    added = []
    try:
        for family in families:
            added.append(register_structure(family))
        yield
    finally:
        for family in added:
            _FAMILIES.pop(family.name, None)


def structures() -> list[str]:
    """Names of the registered structure families, in registration order."""
    return list(_FAMILIES)


def families() -> list[StructureFamily]:
    """The registered entries, in registration order."""
    return list(_FAMILIES.values())


def get_structure(name: object, argument: str = "structure") -> StructureFamily:
    """The entry registered as ``name`` (errors name ``argument``)."""
    if not isinstance(name, str):
        raise TypeError(f"{argument} must be the name of a registered structure, got {type(name).__name__}")
    if name not in _FAMILIES:
        raise ValueError(f"{argument} must be one of the registered structures {structures()}, got {name!r}")
    return _FAMILIES[name]


def parse_label(label: object) -> tuple[StructureFamily, Hparams] | None:
    """``(family, variant)`` of a series label made by :meth:`StructureFamily.series_label`, or
    None when ``label`` is not one (a user's own series name)."""
    match = _LABEL.fullmatch(label) if isinstance(label, str) else None
    if match is None or match.group(1) not in _FAMILIES:
        return None
    variant: Hparams = {}
    for part in filter(None, (match.group(2) or "").split(", ")):
        key, sep, value = part.partition("=")
        if not sep:
            return None
        variant[key] = _parse_value(value)
    return _FAMILIES[match.group(1)], variant


def style_of(label: object) -> PlotStyle | None:
    """The registered style of a series label (None for labels no family claims)."""
    parsed = parse_label(label)
    return None if parsed is None else parsed[0].style_for(parsed[1])


def study_families(
    structures: Sequence[str] | None,
    options: Mapping[str, Any],
    include: Callable[[StructureFamily], bool] = lambda family: True,
) -> list[tuple[StructureFamily, Hparams, Hparams]]:
    """The families a study runs, each with its variant options and fit options.

    ``structures``: names (default: every registered family for which ``include`` holds).
    ``options``: keywords of the study call: a family's name with True/False adds or leaves out
    that family (``butterfly=True``); any other key must be a variant or fit option of a
    registered family (``nblocks=(2, 4)``) and goes to the families that declare it, whose own
    defaults fill the rest.
    """
    if structures is None:
        chosen = [f for f in _FAMILIES.values() if include(f)]
    else:
        names = check_sequence("structures", structures)
        if not names:
            raise ValueError("structures must name at least one registered structure")
        chosen = list({f.name: f for f in (get_structure(n, "structures") for n in names)}.values())
    known = _option_names()
    for key, value in options.items():
        if key in _FAMILIES:
            check_bool(key, value)
            family = _FAMILIES[key]
            if value and family not in chosen:
                chosen.append(family)
            elif not value and family in chosen:
                chosen.remove(family)
        elif key not in known:
            raise TypeError(
                f"unknown option {key}=...; the registered families take {sorted(known)}, "
                f"or a family's name (True/False) to add or leave out that family"
            )
    return [
        (
            f,
            {k: options.get(k, default) for k, default in f.variant_options.items()},
            {k: options.get(k, default) for k, default in f.fit_options.items()},
        )
        for f in chosen
    ]
