"""Clean + adversarial replay (Hou et al. Section IV-A; the mixed objective of their Eq. 4,
RST's Eq. 5 with weight beta): per sample CE(f(x), y) + beta * CE(f(x_adv), y).

Each batch's clean images and their adversarial versions go through the model together (one
train-mode forward over the 1:1 concatenation, so BatchNorm sees the mix) and the loss keeps
the clean term as the replay that prevents forgetting of the clean-trained model.

A sample whose x_adv equals x exactly (zero attack steps, e.g. the clean-only tail of
``dra_schedule``, or DRA with p = 0) is not an adversarial example: it contributes CE(f(x), y)
once and is not forwarded twice, so a batch without any perturbed sample is plain natural
training (one forward of B rows). The check costs one host synchronisation per batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..attacks.plan import AttackPlan
from ..component import MAX_WEIGHT, require_in
from ..context import Batch, RunContext
from .base import OBJECTIVES, Objective, per_sample_beta


@OBJECTIVES.register("replay")
class Replay(Objective):
    """Replay: CE on the clean batch + beta * CE on its adversarial batch (1:1, one forward)."""

    def __init__(self, ctx: RunContext, beta: float = 1.0) -> None:
        super().__init__(ctx)
        require_in(beta, "objective.beta", 0, MAX_WEIGHT, why="a loss weight")
        self.beta = beta

    def loss(self, model: nn.Module, batch: Batch, x_adv: torch.Tensor, plan: AttackPlan, *,
             commit: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        x, y = batch.x, batch.y
        B = x.shape[0]
        rows = (x_adv != x).flatten(1).any(dim=1).nonzero().squeeze(1)
        if rows.numel() == 0:
            logits = model(x)
            return F.cross_entropy(logits.float(), y, reduction="none"), logits
        logits_all = model(torch.cat([x, x_adv[rows]]))
        logits_nat, logits_adv = logits_all[:B], logits_all[B:]
        ce_nat = F.cross_entropy(logits_nat.float(), y, reduction="none")
        ce_adv = F.cross_entropy(logits_adv.float(), y[rows], reduction="none")
        beta = per_sample_beta(plan, self.beta, ce_adv)
        if isinstance(beta, torch.Tensor):
            beta = beta[rows]
        loss = ce_nat.index_add(0, rows, beta * ce_adv)
        # training accuracy is measured on what each sample was trained on last: x_adv if moved
        logits = logits_nat.index_copy(0, rows, logits_adv)
        return loss, logits
