"""Regularisers: an extra per-sample term (B,) added to the objective's training loss.

They are a family of their own (the ``regularizer:`` config section) rather than options of
each objective so that a term such as GradAlign composes with every objective — PGD-AT,
TRADES, MART, UIAT — without any of them knowing about it. Like objectives, ``term`` may be
called a second time per batch on AWP's proxy model; with ``commit=False`` it must not update
any state it keeps.
"""

from __future__ import annotations

import torch
from torch import nn

from ..attacks.plan import AttackPlan
from ..component import Component
from ..context import Batch, RunContext
from ..registry import Registry


class Regularizer(Component):
    """``term(model, batch, x_adv, plan) -> (B,)`` per-sample addition to the training loss,
    or ``None`` when it contributes nothing (no extra passes)."""

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx

    def term(self, model: nn.Module, batch: Batch, x_adv: torch.Tensor, plan: AttackPlan, *,
             commit: bool = True) -> torch.Tensor | None:  # pragma: no cover - abstract
        raise NotImplementedError


REGULARIZERS: Registry[Regularizer] = Registry("regularizer", injected=("ctx",))
