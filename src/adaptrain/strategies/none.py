"""No adversary: every sample gets zero attack steps, so x_adv == x (natural training)."""

from __future__ import annotations

from ..attacks.plan import AttackPlan
from ..context import Batch
from .base import STRATEGIES, Strategy


@STRATEGIES.register("none")
class NoAttack(Strategy):
    """Natural (clean) training: x_adv = x, no attack passes."""

    def plan(self, batch: Batch) -> AttackPlan:
        return AttackPlan(eps=0.0, step_size=0.0, steps=0)
