"""TRADES (Zhang et al. 2019, Eq. 5): CE(f(x), y) + beta * KL(p(x) || p(x_adv)).

The inner attack maximises the KL term from x + 0.001 * N(0, 1) (the authors' start); the
KL reference for the attack is the clean eval-mode prediction, as in their code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..attacks.losses import kl_to_ref
from ..attacks.plan import AttackPlan
from ..component import MAX_WEIGHT, require_in
from ..context import Batch, RunContext
from .base import OBJECTIVES, Objective, per_sample_beta


@OBJECTIVES.register("trades")
class TRADES(Objective):
    """TRADES: CE on clean inputs + beta * KL(clean || adversarial); attack maximises the KL."""

    attack_loss = "kl"
    random_start = "normal"

    def __init__(self, ctx: RunContext, beta: float = 6.0) -> None:
        super().__init__(ctx)
        require_in(beta, "objective.beta", 0, MAX_WEIGHT, why="a loss weight")
        self.beta = beta

    def prepare(self, batch: Batch, plan: AttackPlan) -> AttackPlan:
        return super().prepare(batch, plan).replace(ref_logits=batch.clean_logits())

    def loss(self, model: nn.Module, batch: Batch, x_adv: torch.Tensor, plan: AttackPlan, *,
             commit: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        logits_nat = model(batch.x)
        logits_adv = model(x_adv)
        ce = F.cross_entropy(logits_nat.float(), batch.y, reduction="none")
        kl = kl_to_ref(logits_adv, logits_nat)
        return ce + per_sample_beta(plan, self.beta, kl) * kl, logits_adv
