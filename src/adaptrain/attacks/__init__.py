"""Attacks: pure functions over per-sample plans, and the ``attack:`` registry."""

from __future__ import annotations

from . import engine
from .base import ATTACKS, Attack, BNMode, NormName, StartName
from .losses import LOSSES, LossFn, cw_margin, kl_to_ref, make_loss
from .pgd import pgd
from .plan import AttackPlan, AttackResult


@ATTACKS.register("pgd")
def pgd_attack(norm: NormName = "linf", random_start: StartName = "auto", bn: BNMode = "eval",
               restarts: int = 1) -> Attack:
    """Projected gradient descent (Madry et al. 2018) with per-sample eps / step / steps."""
    return Attack("pgd", pgd, norm=norm, random_start=random_start, bn=bn, restarts=restarts)


__all__ = [
    "ATTACKS", "Attack", "AttackPlan", "AttackResult", "LOSSES", "LossFn", "cw_margin", "engine",
    "kl_to_ref", "make_loss", "pgd",
]
