"""PGD-AT (Madry et al. 2018): cross-entropy on the adversarial batch."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..attacks.plan import AttackPlan
from ..component import require
from ..context import Batch, RunContext
from .base import OBJECTIVES, Objective


@OBJECTIVES.register("pgd_at")
class PGDAT(Objective):
    """Cross-entropy on x_adv (optional label smoothing): min E[CE(f(x_adv), y)]."""

    def __init__(self, ctx: RunContext, label_smoothing: float = 0.0) -> None:
        super().__init__(ctx)
        require(0.0 <= label_smoothing < 1.0, "objective.label_smoothing",
                f"must be in [0, 1), got {label_smoothing}")
        self.label_smoothing = label_smoothing

    def loss(self, model: nn.Module, batch: Batch, x_adv: torch.Tensor, plan: AttackPlan, *,
             commit: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        logits = model(x_adv)
        ce = F.cross_entropy(logits.float(), batch.y, reduction="none",
                             label_smoothing=self.label_smoothing)
        return ce, logits
