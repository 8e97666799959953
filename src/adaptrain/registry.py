"""One decorator-based registry per component family (models, data, attacks, ...).

A registered builder's keyword parameters *are* its config: the section
``strategy: {name: ecas, eps_min: 3, ...}`` is checked against the signature of the
builder registered as ``ecas`` (unknown keys are refused, naming the allowed ones), and
values written on the command line are converted to the annotated types.
"""

from __future__ import annotations

import inspect
import math
import re
import types
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Annotated, Any, Generic, TypeVar

from .errors import ConfigError

T = TypeVar("T")

_FRACTION = re.compile(r"^\s*(-?\d+(?:\.\d*)?(?:e-?\d+)?)\s*/\s*(\d+(?:\.\d*)?)\s*$")


@dataclass(frozen=True)
class Infinite:
    """``Annotated[float, Infinite()]``: the field may be +inf (YAML ``.inf``), an explicit "no
    limit" such as SAAT's rho; every other float field must be finite, so that an overflowing
    ``1e309`` or a stray ``.inf`` never reaches the arithmetic."""


@dataclass(frozen=True)
class PathOf:
    """``Annotated[str, PathOf("a run directory or checkpoint")]``: the string is a file-system
    path. YAML turns ``true`` / ``on`` / ``3`` into booleans and numbers, which are refused here
    instead of becoming a file named "on" that is reported missing much later."""

    what: str


InfFloat = Annotated[float, Infinite()]


def parse_number(value: Any, where: str = "") -> Any:
    """Turn ``"8/255"`` into ``8/255`` as a float; leave anything else unchanged.

    A zero denominator raises ConfigError(where): budgets are written as fractions, and a
    ``ZeroDivisionError`` traceback would not say which field holds the typo.
    """
    if isinstance(value, str):
        m = _FRACTION.match(value)
        if m:
            num, den = float(m.group(1)), float(m.group(2))
            if den == 0:
                raise ConfigError(where, f"{value.strip()} divides by zero")
            return num / den
    return value


def _refuse(where: str, expected: str, value: Any) -> ConfigError:
    return ConfigError(where, f"expected {expected}, got {value!r}")


def to_int(value: Any, where: str) -> int:
    """An integer from an int, an integral float or a numeric string (``1e3``); anything that
    overflows (``1e309``) or has a fraction is refused."""
    value = parse_number(value, where)
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise _refuse(where, "an integer", value)
    if isinstance(value, int):
        return value
    try:
        f = float(value)
    except ValueError:
        raise _refuse(where, "an integer", value) from None
    if not math.isfinite(f) or f != int(f):
        raise _refuse(where, "an integer", value)
    return int(f)


def to_float(value: Any, where: str, inf_ok: bool = False) -> float:
    """A finite float (``inf_ok``: +inf too); nan, -inf and overflowing values are refused."""
    value = parse_number(value, where)
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise _refuse(where, "a number", value)
    try:
        f = float(value)
    except (ValueError, OverflowError):
        raise _refuse(where, "a number", value) from None
    if math.isfinite(f) or (inf_ok and f == math.inf):
        return f
    allowed = " or .inf" if inf_ok else ""
    raise ConfigError(where, f"must be a finite number{allowed}, got {value!r}")


def _to_path(value: Any, where: str, what: str) -> str:
    """A path string; booleans, numbers and number-like strings are refused (they are YAML's
    reading of ``true`` / ``on`` / ``3``, or a typo, not a path: write ``./3`` for a folder 3)."""
    hint = f"give the path of {what}, got {value!r}"
    if isinstance(value, (bool, int, float, dict, list)):
        raise ConfigError(where, hint)
    text = str(value)
    try:
        float(parse_number(text, where))
    except (ValueError, ConfigError):
        return text
    raise ConfigError(where, f"{hint}; write ./{text} if that is the name of a folder")


def coerce(value: Any, annotation: Any, where: str) -> Any:
    """Convert a YAML / command-line value to ``annotation`` or raise ConfigError(where)."""
    if annotation is inspect.Parameter.empty or annotation is Any:
        return parse_number(value, where)
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is Annotated:
        base, *meta = args
        path = next((m for m in meta if isinstance(m, PathOf)), None)
        if path is not None:
            return _to_path(value, where, path.what)
        if base is float:
            return to_float(value, where, inf_ok=any(isinstance(m, Infinite) for m in meta))
        return coerce(value, base, where)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [arg for arg in args if arg is not type(None)]
        if len(options) == 1:  # ``X | None``: X's own message says what to write
            return coerce(value, options[0], where)
        errors = []
        for arg in options:
            try:
                return coerce(value, arg, where)
            except ConfigError as exc:
                errors.append(exc.message)
        raise ConfigError(where, f"{value!r} is not a valid value ({'; '.join(errors)})")
    if origin in (list, tuple, Iterable) or annotation in (list, tuple):
        if isinstance(value, (int, float, str)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise _refuse(where, "a list", value)
        inner = args[0] if args else Any
        return [coerce(v, inner, where) for v in value]
    if origin is typing.Literal:
        if isinstance(value, (dict, list)) or value not in args:
            allowed = ", ".join(str(a) for a in args)
            raise ConfigError(where, f"{value!r} is not allowed; allowed: {allowed}")
        return value
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise _refuse(where, "true/false", value)
    if annotation is int:
        return to_int(value, where)
    if annotation is float:
        return to_float(value, where)
    if annotation is str:
        if isinstance(value, bool):  # YAML 1.1 reads on / off / yes / no as booleans
            return "on" if value else "off"
        if isinstance(value, (dict, list)):
            raise _refuse(where, "a string", value)
        return str(value)
    if annotation is dict or origin is dict:
        if not isinstance(value, dict):
            raise _refuse(where, "a mapping", value)
        return value
    return value


Validator = Callable[[dict[str, Any]], None]
# a check of a component's section against the sections it ``requires``: the resolved
# sections by name ({"strategy": {...}, "attack": {...}, ...}), defaults filled in
CrossCheck = Callable[[dict[str, dict[str, Any]]], None]


@dataclass(frozen=True)
class Traits:
    """What a component is, declared where it is registered, for the loop and the CLI to read
    instead of testing names.

    ``single_step``: an attack with one gradient step (training then also records FGSM
    validation accuracy, the catastrophic-overfitting signal). ``eval_curve``: budgets
    ([0, 1] units) of the accuracy-vs-eps curve that ``adaptrain eval`` draws by default for
    runs of this strategy (SAAT reports robustness disparity over them). ``eps_denominator``:
    a data set's unit for printing budgets: 255 writes 8/255 (8-bit pixels), None a decimal
    (digits, whose 0..16 features have no natural pixel step: 0.1).
    """

    single_step: bool = False
    eval_curve: tuple[float, ...] = ()
    eps_denominator: int | None = 255


@dataclass
class Entry(Generic[T]):
    name: str
    builder: Callable[..., T]
    description: str
    # parameters that the caller supplies (context objects), not the config section
    injected: tuple[str, ...] = field(default_factory=tuple)
    # a pure check of the whole section (defaults filled in) for components too costly to build
    # just to check them (models, LAS's policy network); None: validation builds a stub
    validator: Validator | None = None
    # other sections this component only works with, e.g. SAAT: {"attack": "sa_pgd"}
    requires: dict[str, str] = field(default_factory=dict)
    # with ``requires``: the values that must agree across sections (SAAT: the sa_pgd search
    # fits under the strategy's eps_max), checked by validation after each section's own
    cross_check: CrossCheck | None = None
    # fields that are budgets (eps, step sizes; numbers or lists of numbers), bounded by the
    # training attack's norm; in units of the field ``budget_unit`` names (None: [0, 1] units)
    budgets: tuple[str, ...] = ()
    budget_unit: str | None = None
    traits: Traits = field(default_factory=Traits)

    @cached_property
    def _params(self) -> dict[str, inspect.Parameter]:
        sig = inspect.signature(self.builder)
        hints = typing.get_type_hints(
            self.builder.__init__ if inspect.isclass(self.builder) else self.builder,
            include_extras=True,
        )
        out = {}
        for name, p in sig.parameters.items():
            if name in self.injected or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                continue
            out[name] = p.replace(annotation=hints.get(name, p.annotation))
        return out

    def params(self) -> dict[str, inspect.Parameter]:
        """The config fields: the builder's parameters minus the injected ones (computed once:
        validation reads them for every section of every config)."""
        return dict(self._params)

    def defaults(self) -> dict[str, Any]:
        return {
            n: p.default for n, p in self._params.items() if p.default is not inspect.Parameter.empty
        }

    def check(self, section: dict[str, Any], where: str) -> dict[str, Any]:
        """Validate and convert ``section`` (without 'name') against the builder's signature."""
        params = self._params
        out: dict[str, Any] = {}
        for key, value in section.items():
            if key not in params:
                allowed = ", ".join(sorted(params)) or "(none)"
                raise ConfigError(
                    f"{where}.{key}", f"unknown field for {self.name!r}; allowed: {allowed}"
                )
            out[key] = coerce(value, params[key].annotation, f"{where}.{key}")
        missing = [
            n for n, p in params.items() if p.default is inspect.Parameter.empty and n not in out
        ]
        if missing:
            raise ConfigError(f"{where}.{missing[0]}", f"required by {self.name!r}")
        return out

    def probe(self, fields: dict[str, Any], **stub: Any) -> None:
        """Run the component's own range checks on checked ``fields`` without data or a model:
        its ``validator`` if it has one, else build it against ``stub`` and drop it."""
        if self.validator is not None:
            self.validator({**self.defaults(), **fields})
        else:
            self.builder(**stub, **fields)


class Registry(Generic[T]):
    """Maps names to builders for one family; ``family`` is the config section name."""

    def __init__(self, family: str, injected: tuple[str, ...] = ()) -> None:
        self.family = family
        self.injected = injected
        self._entries: dict[str, Entry[T]] = {}

    def register(
        self, name: str, description: str = "", *, validator: Validator | None = None,
        requires: dict[str, str] | None = None, budgets: tuple[str, ...] = (),
        budget_unit: str | None = None, traits: Traits | None = None,
        cross_check: CrossCheck | None = None,
    ) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator; ``validator``, ``requires``, ``cross_check``, ``budgets``, ``budget_unit``,
        ``traits``: see :class:`Entry` and :class:`Traits`."""

        def deco(builder: Callable[..., T]) -> Callable[..., T]:
            if name in self._entries:
                raise ValueError(f"{self.family} {name!r} registered twice")
            doc = description or (inspect.getdoc(builder) or "").split("\n")[0]
            self._entries[name] = Entry(name, builder, doc, self.injected, validator,
                                        dict(requires or {}), cross_check, tuple(budgets),
                                        budget_unit, traits or Traits())
            return builder

        return deco

    def names(self) -> list[str]:
        return sorted(self._entries)

    def get(self, name: Any) -> Entry[T]:
        """The entry registered as ``name``; anything else (an unknown name, or a mapping / list /
        number where a name belongs) is a ConfigError naming ``<family>.name``."""
        allowed = ", ".join(self.names())
        if not isinstance(name, str):
            raise ConfigError(f"{self.family}.name", f"expected a name, got {name!r}; allowed: {allowed}")
        if name not in self._entries:
            raise ConfigError(f"{self.family}.name", f"unknown {name!r}; allowed: {allowed}")
        return self._entries[name]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._entries

    def build(self, section: dict[str, Any], **injected: Any) -> T:
        """Build from a config section ``{name: ..., **kwargs}``."""
        section = dict(section)
        name = section.pop("name", None)
        if name is None:
            raise ConfigError(f"{self.family}.name", f"missing; allowed: {', '.join(self.names())}")
        entry = self.get(name)
        kwargs = entry.check(section, self.family)
        return entry.builder(**injected, **kwargs)
