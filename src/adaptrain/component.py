"""Shared base for stateful training components (strategies, objectives), and the range-check
helpers and bounds that every config check uses (one ``require``, one set of caps)."""

from __future__ import annotations

from typing import Any, ClassVar, NamedTuple

import torch

from .errors import ConfigError

# Upper bounds shared by many fields (docs/config.md says why each is where it is). They
# refuse typos and overflows, not ambitious settings: each is far above any published use.
MAX_EPOCHS = 100_000  # epochs and epoch indices (warm-up, milestones, schedule epochs)
MAX_STEPS = 10_000  # attack iterations per sample (PGD-1000 evaluations are the largest in use)
MAX_RESTARTS = 100
MAX_WEIGHT = 1_000.0  # weights of loss terms (TRADES / MART beta, UIAT lam, GradAlign lam, ...)
MAX_MULTIPLE = 10.0  # sizes written as multiples of eps (FGSM step, N-FGSM noise, ECAS step ratio)
MAX_LR = 100.0  # learning rates: SGD on these networks diverges near 1; 1e3 is a typo
MAX_BATCH = 65_536
MAX_IMAGES = 100_000_000  # counts of images (subsets, validation sizes): above every data set
MAX_SEED = 2**32 - 1  # seed * 1_000_003 + offset must fit a 64-bit generator seed
MAX_WIDTH = 1_024  # base channel widths: 1024 makes a ResNet-18 of ~2.8e9 parameters


def require(ok: bool, field: str, message: str) -> None:
    """Raise ConfigError(field, message) unless ``ok``: the one helper every range check uses,
    so each failure is one line naming the field."""
    if not ok:
        raise ConfigError(field, message)


def require_in(value: float, field: str, low: float | None = None, high: float | None = None, *,
               low_open: bool = False, high_open: bool = False, why: str = "") -> None:
    """Refuse ``value`` outside [low, high] (``low_open`` / ``high_open``: the bound itself is
    excluded; None: no bound), saying which bound failed and, for the upper one, ``why``."""
    if low is not None and (value <= low if low_open else value < low):
        raise ConfigError(field, f"must be {'>' if low_open else '>='} {_num(low)}, got {_num(value)}")
    if high is not None and (value >= high if high_open else value > high):
        reason = f" ({why})" if why else ""
        raise ConfigError(field, f"must be {'<' if high_open else '<='} {_num(high)}{reason}, "
                          f"got {_num(value)}")


def _num(x: float) -> str:
    """Integers in full (a seed bound must not round), floats to 6 significant digits."""
    return str(x) if isinstance(x, int) else f"{x:.6g}"


class Series(NamedTuple):
    """How ``adaptrain report`` shows one telemetry column: a human ``label`` (``{field}`` in it
    stands for the unit of the component's config field ``field``: ``{eps_unit}`` reads "/255"
    when eps_unit is 1/255) and ``floor``, the narrowest y-range of its panel in the column's
    own units (0: a tenth of its largest value), so that a nearly flat quantity's noise is not
    drawn as a trend."""

    label: str
    floor: float = 0.0


class Component:
    """State lives in attributes listed in ``state_keys`` (tensors, numbers, dicts, generators,
    modules, optimisers); ``state_dict`` / ``load_state_dict`` round-trip them for checkpoints.

    ``telemetry`` declares, next to :meth:`end_epoch`, how each of its columns is shown: keys
    are column names, and ``<q>_share`` for a group of ``<q>_share_<value>`` columns (a
    distribution over the values of q)."""

    state_keys: tuple[str, ...] = ()
    telemetry: ClassVar[dict[str, Series]] = {}

    def start_epoch(self, epoch: int) -> None:
        """Called before the first batch of ``epoch`` (0-based)."""

    def end_epoch(self, epoch: int) -> dict[str, float]:
        """Telemetry for ``RUN/strategy.csv`` (strategies) or ``metrics.csv`` (objectives)."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key in self.state_keys:
            value = getattr(self, key)
            if isinstance(value, torch.Generator):
                out[key] = {"generator_state": value.get_state()}
            elif hasattr(value, "state_dict"):
                out[key] = {"module_state": value.state_dict()}
            elif isinstance(value, torch.Tensor):
                out[key] = value.detach().clone()
            else:
                out[key] = value
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in self.state_keys:
            if key not in state:
                raise KeyError(f"checkpoint lacks {type(self).__name__}.{key}")
            value, current = state[key], getattr(self, key)
            if isinstance(current, torch.Generator):
                current.set_state(value["generator_state"])
            elif hasattr(current, "load_state_dict"):
                current.load_state_dict(value["module_state"])
            elif isinstance(current, torch.Tensor):
                current.copy_(value)
            else:
                setattr(self, key, value)
