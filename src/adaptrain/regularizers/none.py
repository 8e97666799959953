"""No regulariser: the objective's loss alone."""

from __future__ import annotations

import torch
from torch import nn

from ..attacks.plan import AttackPlan
from ..context import Batch
from .base import REGULARIZERS, Regularizer


@REGULARIZERS.register("none")
class NoRegularizer(Regularizer):
    """Nothing is added to the objective's loss."""

    def term(self, model: nn.Module, batch: Batch, x_adv: torch.Tensor, plan: AttackPlan, *,
             commit: bool = True) -> torch.Tensor | None:
        return None
