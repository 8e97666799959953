"""Objectives: what the model is trained on, as per-sample losses (B,)."""

from __future__ import annotations

import torch
from torch import nn

from ..attacks.plan import AttackPlan
from ..component import Component
from ..context import Batch, RunContext
from ..registry import Registry


class Objective(Component):
    """``prepare`` adapts the strategy's plan to the objective's inner problem (e.g. TRADES
    attacks the KL term); ``loss`` returns per-sample training losses (B,) and, when it has
    them, the train-mode logits on x_adv (B, C) for the training accuracy.

    ``loss`` may be called more than once per batch on other weights (AWP's proxy): with
    ``commit=False`` it must not update any state it keeps.
    """

    attack_loss: str = "ce"
    # the random start this objective wishes for (TRADES / MART: 0.001 * N(0, 1)); None: the
    # attack's default. Attack.resolve weighs it against the config and the plan
    random_start: str | None = None

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx

    def prepare(self, batch: Batch, plan: AttackPlan) -> AttackPlan:
        return plan.replace(loss=self.attack_loss)

    def loss(self, model: nn.Module, batch: Batch, x_adv: torch.Tensor, plan: AttackPlan, *,
             commit: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:  # pragma: no cover
        raise NotImplementedError


OBJECTIVES: Registry[Objective] = Registry("objective", injected=("ctx",))


def per_sample_beta(plan: AttackPlan, default: float, like: torch.Tensor) -> torch.Tensor | float:
    """A per-sample weight chosen by the strategy (``plan.beta``, (B,)) or the objective's own
    scalar."""
    return default if plan.beta is None else plan.beta.to(like.dtype)
