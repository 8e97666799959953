"""Strategies decide, per batch and per sample, how hard to attack (the AttackPlan)."""

from __future__ import annotations

from collections.abc import Callable

from ..attacks.plan import AttackPlan
from ..component import Component
from ..context import Batch, Feedback, RunContext
from ..registry import Registry


class Strategy(Component):
    """``plan`` before the attack; ``observe`` after the backward pass (before the optimiser
    step). Everything kept between batches must be listed in ``state_keys``."""

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx

    def plan(self, batch: Batch) -> AttackPlan:  # pragma: no cover - abstract
        raise NotImplementedError

    def observe(self, fb: Feedback) -> None:
        """Learn from the step (rewards, losses); default: nothing."""

    def summary(self, telemetry: dict[str, float], eps_text: Callable[[float], str]) -> str:
        """The adaptive state in a few characters for the epoch line (e.g. ``eps 7.3/255 up
        12%``), read from this epoch's ``end_epoch`` telemetry; ``eps_text`` writes a [0, 1]
        budget in the data set's units. Strategies with nothing to adapt return ""."""
        return ""


def pct(share: float) -> str:
    """A share in [0, 1] as a whole percentage: 0.123 -> '12%'."""
    return f"{100 * share:.0f}%"


STRATEGIES: Registry[Strategy] = Registry("strategy", injected=("ctx",))
