"""One decorator-based registry per component family (models, data, attacks, ...).

A registered builder's keyword parameters *are* its config: the section
``strategy: {name: ecas, eps_min: 3, ...}`` is checked against the signature of the
builder registered as ``ecas`` (unknown keys are refused, naming the allowed ones), and
values written on the command line are converted to the annotated types.
"""

from __future__ import annotations

import inspect
import re
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from .errors import ConfigError

T = TypeVar("T")

_FRACTION = re.compile(r"^\s*(-?\d+(?:\.\d*)?(?:e-?\d+)?)\s*/\s*(\d+(?:\.\d*)?)\s*$")


def parse_number(value: Any) -> Any:
    """Turn ``"8/255"`` into ``8/255`` as a float; leave anything else unchanged."""
    if isinstance(value, str):
        m = _FRACTION.match(value)
        if m:
            return float(m.group(1)) / float(m.group(2))
    return value


def coerce(value: Any, annotation: Any, where: str) -> Any:
    """Convert a YAML / command-line value to ``annotation`` or raise ConfigError(where)."""
    value = parse_number(value)
    if annotation is inspect.Parameter.empty or annotation is Any:
        return value
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg, where)
            except ConfigError as exc:
                errors.append(exc.message)
        raise ConfigError(where, f"{value!r} is not a valid value ({'; '.join(errors)})")
    if origin in (list, tuple, Iterable) or annotation in (list, tuple):
        if isinstance(value, (int, float, str)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(where, f"expected a list, got {value!r}")
        inner = args[0] if args else Any
        return [coerce(v, inner, where) for v in value]
    if origin is typing.Literal:
        if value not in args:
            allowed = ", ".join(str(a) for a in args)
            raise ConfigError(where, f"{value!r} is not allowed; allowed: {allowed}")
        return value
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(where, f"expected true/false, got {value!r}")
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ConfigError(where, f"expected an integer, got {value!r}")
        try:
            f = float(value)
        except ValueError:
            raise ConfigError(where, f"expected an integer, got {value!r}") from None
        if f != int(f):
            raise ConfigError(where, f"expected an integer, got {value!r}")
        return int(f)
    if annotation is float:
        if isinstance(value, bool):
            raise ConfigError(where, f"expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(where, f"expected a number, got {value!r}") from None
    if annotation is str:
        if isinstance(value, bool):  # YAML 1.1 reads on / off / yes / no as booleans
            return "on" if value else "off"
        if isinstance(value, (dict, list)):
            raise ConfigError(where, f"expected a string, got {value!r}")
        return str(value)
    if annotation is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(where, f"expected a mapping, got {value!r}")
        return value
    return value


@dataclass
class Entry(Generic[T]):
    name: str
    builder: Callable[..., T]
    description: str
    # parameters that the caller supplies (context objects), not the config section
    injected: tuple[str, ...] = field(default_factory=tuple)

    def params(self) -> dict[str, inspect.Parameter]:
        sig = inspect.signature(self.builder)
        hints = typing.get_type_hints(
            self.builder.__init__ if inspect.isclass(self.builder) else self.builder
        )
        out = {}
        for name, p in sig.parameters.items():
            if name in self.injected or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                continue
            out[name] = p.replace(annotation=hints.get(name, p.annotation))
        return out

    def defaults(self) -> dict[str, Any]:
        return {
            n: p.default for n, p in self.params().items() if p.default is not inspect.Parameter.empty
        }

    def check(self, section: dict[str, Any], where: str) -> dict[str, Any]:
        """Validate and convert ``section`` (without 'name') against the builder's signature."""
        params = self.params()
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


class Registry(Generic[T]):
    """Maps names to builders for one family; ``family`` is the config section name."""

    def __init__(self, family: str, injected: tuple[str, ...] = ()) -> None:
        self.family = family
        self.injected = injected
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, description: str = "") -> Callable[[Callable[..., T]], Callable[..., T]]:
        def deco(builder: Callable[..., T]) -> Callable[..., T]:
            if name in self._entries:
                raise ValueError(f"{self.family} {name!r} registered twice")
            doc = description or (inspect.getdoc(builder) or "").split("\n")[0]
            self._entries[name] = Entry(name, builder, doc, self.injected)
            return builder

        return deco

    def names(self) -> list[str]:
        return sorted(self._entries)

    def get(self, name: str) -> Entry[T]:
        if name not in self._entries:
            raise ConfigError(
                f"{self.family}.name", f"unknown {name!r}; allowed: {', '.join(self.names())}"
            )
        return self._entries[name]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def build(self, section: dict[str, Any], **injected: Any) -> T:
        """Build from a config section ``{name: ..., **kwargs}``."""
        section = dict(section)
        name = section.pop("name", None)
        if name is None:
            raise ConfigError(f"{self.family}.name", f"missing; allowed: {', '.join(self.names())}")
        entry = self.get(name)
        kwargs = entry.check(section, self.family)
        return entry.builder(**injected, **kwargs)
