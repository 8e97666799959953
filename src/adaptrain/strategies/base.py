"""Strategies decide, per batch and per sample, how hard to attack (the AttackPlan)."""

from __future__ import annotations

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


STRATEGIES: Registry[Strategy] = Registry("strategy", injected=("ctx",))
