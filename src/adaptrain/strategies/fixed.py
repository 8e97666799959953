"""The classical adversary: the same eps, step size and number of steps for every sample."""

from __future__ import annotations

from ..attacks.plan import AttackPlan
from ..component import MAX_STEPS, require, require_in
from ..context import Batch, RunContext
from .base import STRATEGIES, Strategy


@STRATEGIES.register("fixed", budgets=("eps", "step_size"))
class Fixed(Strategy):
    """Constant budget: eps, step_size (in [0,1] units; presets may write 8/255) and steps."""

    def __init__(self, ctx: RunContext, eps: float = 8 / 255, step_size: float = 2 / 255,
                 steps: int = 10) -> None:
        super().__init__(ctx)
        require(eps >= 0, "strategy.eps", f"must be >= 0, got {eps}")
        require(step_size >= 0, "strategy.step_size", f"must be >= 0, got {step_size}")
        require_in(steps, "strategy.steps", 1, MAX_STEPS)
        self.eps, self.step_size, self.steps = eps, step_size, steps

    def plan(self, batch: Batch) -> AttackPlan:
        return AttackPlan(eps=self.eps, step_size=self.step_size, steps=self.steps)
