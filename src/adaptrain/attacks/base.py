"""The ``attack:`` config section and the registry of attacks.

Attacks are pure functions ``fn(model, x, y, plan, *, generator, loss_fn, final_eval)``.
The registry stores, per name, a *factory* whose keyword parameters are the config section's
fields; it returns an :class:`Attack`. ``Attack.resolve`` is the one place where a plan's
unset fields (norm, random start, BatchNorm mode, restarts) are decided, once per batch,
before the attack runs; the precedence table is in its docstring.
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
    """A configured attack: ``attack(model, x, y, attack.resolve(plan), generator=...)``.

    ``random_start`` is the config's choice (``auto``: no choice); ``default_start`` the
    attack's own default when nobody chooses (PGD: uniform; DRA and FGSM: none, their
    algorithms start at x).
    """

    name: str
    fn: Callable[..., AttackResult]
    norm: str = "linf"
    random_start: str = "auto"
    bn: str = "eval"
    restarts: int = 1
    default_start: str = "uniform"
    fixed_norm: bool = False  # the attack defines its norm (DRA: L1); plans cannot change it

    def resolve(self, plan: AttackPlan, wish: str | None = None) -> AttackPlan:
        """Fill the plan's unset fields, by this precedence (first that applies):

        ============  ================  ========================  =================
        field         1                 2                         3
        ============  ================  ========================  =================
        random start  attack config     plan (strategy / caller)  objective's ``wish``,
                      (not ``auto``)                              then ``default_start``
        norm          fixed norm        plan                      attack config
        bn            plan              attack config
        restarts      the larger of plan and attack config
        ============  ================  ========================  =================
        """
        if self.random_start != "auto":
            start = self.random_start
        else:
            start = plan.random_start or wish or self.default_start
        return plan.replace(
            norm=self.norm if self.fixed_norm else plan.norm or self.norm,
            random_start=start,
            bn=plan.bn or self.bn,
            restarts=max(plan.restarts, self.restarts),
        )

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, plan: AttackPlan, *,
                 generator: torch.Generator | None = None, loss_fn: LossFn | None = None,
                 final_eval: bool = False) -> AttackResult:
        """Run ``plan``; one that :meth:`resolve` has not filled in yet is resolved here
        (without an objective's wish), so a plan is resolved exactly once either way."""
        if plan.norm is None or plan.random_start is None or plan.bn is None:
            plan = self.resolve(plan)
        return self.fn(model, x, y, plan, generator=generator, loss_fn=loss_fn,
                       final_eval=final_eval)


ATTACKS: Registry[Attack] = Registry("attack")

NormName = Literal["linf", "l2", "l1"]
StartName = Literal["auto", "uniform", "normal", "none"]
BNMode = Literal["eval", "train"]
