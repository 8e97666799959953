"""The ``attack:`` config section and the registry of attacks.

Attacks are pure functions ``fn(model, x, y, plan, *, generator, loss_fn, final_eval)``.
The registry stores, per name, a *factory* whose keyword parameters are the config section's
fields; it returns an :class:`Attack` that fills the plan's unset fields (norm, random start,
BatchNorm mode, restarts) from the config and calls the function.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

import torch
from torch import nn

from ..registry import Registry
from .losses import LossFn
from .plan import AttackPlan, AttackResult


class AttackFn(Protocol):
    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, plan: AttackPlan, *,
                 generator: torch.Generator | None = None, loss_fn: LossFn | None = None,
                 final_eval: bool = False) -> AttackResult: ...


@dataclass
class Attack:
    """A configured attack: ``attack(model, x, y, plan, generator=...) -> AttackResult``."""

    name: str
    fn: Callable[..., AttackResult]
    norm: str = "linf"
    random_start: str = "auto"  # auto: whatever the plan (objective / strategy) asks, else uniform
    bn: str = "eval"
    restarts: int = 1

    def resolve(self, plan: AttackPlan) -> AttackPlan:
        start = plan.random_start if self.random_start == "auto" else self.random_start
        return plan.replace(
            norm=plan.norm or self.norm,
            random_start=start or "uniform",
            bn=plan.bn or self.bn,
            restarts=max(plan.restarts, self.restarts),
        )

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, plan: AttackPlan, *,
                 generator: torch.Generator | None = None, loss_fn: LossFn | None = None,
                 final_eval: bool = False) -> AttackResult:
        return self.fn(model, x, y, self.resolve(plan), generator=generator, loss_fn=loss_fn,
                       final_eval=final_eval)


ATTACKS: Registry[Attack] = Registry("attack")

NormName = Literal["linf", "l2", "l1"]
StartName = Literal["auto", "uniform", "normal", "none"]
BNMode = Literal["eval", "train"]
