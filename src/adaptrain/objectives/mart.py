"""MART (Wang et al. 2020, Eq. 8): boosted CE on x_adv + beta * KL(p(x) || p(x_adv)) * (1 - p_y(x)).

Boosted CE = CE(f(x_adv), y) - log(1 - max_{k != y} p_k(x_adv)). The attack maximises CE from
x + 0.001 * N(0, 1), as the authors' code does.
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


@OBJECTIVES.register("mart")
class MART(Objective):
    """MART: misclassification-aware boosted CE + beta * (1 - p_y(x)) * KL(clean || adv)."""

    random_start = "normal"

    def __init__(self, ctx: RunContext, beta: float = 6.0) -> None:
        super().__init__(ctx)
        require_in(beta, "objective.beta", 0, MAX_WEIGHT, why="a loss weight")
        self.beta = beta

    def loss(self, model: nn.Module, batch: Batch, x_adv: torch.Tensor, plan: AttackPlan, *,
             commit: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        y = batch.y
        logits_nat = model(batch.x).float()
        logits_adv = model(x_adv)
        adv_probs = F.softmax(logits_adv.float(), dim=1)
        # the most likely wrong class on x_adv
        wrong = adv_probs.masked_fill(F.one_hot(y, adv_probs.shape[1]).bool(), -1.0).argmax(dim=1)
        p_wrong = adv_probs.gather(1, wrong[:, None]).squeeze(1)
        bce = F.cross_entropy(logits_adv.float(), y, reduction="none") - torch.log(
            1.0001 - p_wrong + 1e-12
        )
        p_true = F.softmax(logits_nat, dim=1).gather(1, y[:, None]).squeeze(1)
        kl = kl_to_ref(logits_adv, logits_nat) * (1.0000001 - p_true)
        return bce + per_sample_beta(plan, self.beta, kl) * kl, logits_adv
