"""Attacks: pure functions over per-sample plans, and the ``attack:`` registry.

Every module in this package (except the engine's own parts) is imported, so a new attack is
one file with an ``@ATTACKS.register`` factory.
"""

from __future__ import annotations

from ..autoload import import_submodules
from . import engine
from .base import ATTACKS, Attack, BNMode, NormName, StartName
from .losses import LOSSES, LossFn, cw_margin, kl_to_ref, make_loss
from .pgd import pgd
from .plan import AttackPlan, AttackResult

import_submodules(__name__, __path__, skip=("base", "engine", "losses", "plan"))

__all__ = [
    "ATTACKS", "Attack", "AttackPlan", "AttackResult", "BNMode", "LOSSES", "LossFn", "NormName",
    "StartName", "cw_margin", "engine", "kl_to_ref", "make_loss", "pgd",
]
