"""Projected gradient descent with per-sample budgets, early stopping and restarts.

Madry et al. 2018, "Towards Deep Learning Models Resistant to Adversarial Attacks", Eq. (2):
x^{t+1} = Proj_{B(x, eps)}(x^t + alpha * sign(grad_x L(f(x^t), y))) for L-inf (the L2 step
uses the L2-normalised gradient). Threat model: ||delta_i||_p <= eps_i per sample, x + delta
in [0, 1]. Shapes: x (B, C, H, W) in [0, 1], y (B,), plan tensors (B,).
"""

from __future__ import annotations

import torch
from torch import nn

from ..component import MAX_RESTARTS, require_in
from ..threat import bcast, clip_box, per_sample, random_delta
from . import engine
from .base import ATTACKS, Attack, BNMode, NormName, StartName
from .losses import LossFn, make_loss
from .plan import AttackPlan, AttackResult


def pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    plan: AttackPlan,
    *,
    generator: torch.Generator | None = None,
    loss_fn: LossFn | None = None,
    final_eval: bool = False,
    compact: bool | None = None,
) -> AttackResult:
    """Run ``plan`` on (x, y); returns x_adv (B, C, H, W) and per-sample diagnostics.

    Random start draws come from ``generator`` for the full batch before anything else, so
    compaction, masking and restarts see the same numbers. A sample with ``steps_i == 0`` is
    returned unchanged (no random start either). With ``restarts > 1`` each restart runs only
    on the samples that no previous restart fooled, and every sample keeps its worst case
    (misclassified first, then highest loss; lowest loss when minimising).
    ``compact`` defaults to True exactly when BatchNorm is in eval mode during the attack.
    """
    norm = plan.norm or "linf"
    bn = plan.bn or "eval"
    start = plan.random_start or "uniform"
    compact = (bn == "eval") if compact is None else compact
    if loss_fn is None:
        loss_fn = make_loss(plan.loss, plan.ref_logits)
    B = x.shape[0]
    eps, alpha, steps = plan.tensors(B, x.device)
    rho = None if plan.stop_loss is None else per_sample(plan.stop_loss, B, device=x.device)
    tau = (None if plan.stop_misclassified is None
           else per_sample(plan.stop_misclassified, B, device=x.device, dtype=torch.int64))
    restarts = max(1, int(plan.restarts))
    final_eval = final_eval or restarts > 1

    with engine.frozen_model(model, bn):
        best: AttackResult | None = None
        best_fooled = torch.zeros(B, dtype=torch.bool, device=x.device)
        for r in range(restarts):
            rows = (torch.arange(B, device=x.device) if r == 0
                    else (~best_fooled).nonzero().squeeze(1))
            if rows.numel() == 0:
                break
            sub = _SubBatch(rows, B)
            xs, ys = sub(x), sub(y)
            delta0 = random_delta(xs, plan.init_scale * eps[rows], norm, start, generator)
            delta0 = clip_box(xs, delta0 * bcast(steps[rows] > 0, xs))
            res = engine.run(
                model, xs, ys, delta0,
                eps=eps[rows], step_size=alpha[rows], steps=steps[rows], norm=norm,
                loss_fn=sub.loss(loss_fn), direction=plan.direction, project_ball=plan.project,
                stop_loss=None if rho is None else rho[rows],
                stop_misclassified=None if tau is None else tau[rows],
                compact=compact, final_eval=final_eval,
            )
            if restarts == 1:
                return res
            fooled = res.info["misclassified"] & (plan.direction > 0)
            if best is None:
                best, best_fooled = res, fooled
                continue
            old_loss = best.loss[rows]
            better_loss = (res.loss > old_loss) if plan.direction > 0 else (res.loss < old_loss)
            take = fooled | better_loss  # rows are all un-fooled so far
            best.x_adv[rows] = torch.where(bcast(take, res.x_adv), res.x_adv, best.x_adv[rows])
            best.loss[rows] = torch.where(take, res.loss, old_loss)
            best.steps_used[rows] = torch.where(take, res.steps_used, best.steps_used[rows])
            best_fooled[rows] = fooled
        assert best is not None
        best.info["misclassified"] = best_fooled
        return best


class _SubBatch:
    """Restrict a batch to ``rows`` while loss functions keep full-batch row indices."""

    def __init__(self, rows: torch.Tensor, batch: int) -> None:
        self.rows = rows
        self.full = rows.numel() == batch

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        return t if self.full else t[self.rows]

    def loss(self, fn: LossFn) -> LossFn:
        if self.full:
            return fn
        outer = self.rows

        def sub_loss(model: nn.Module, x_in: torch.Tensor, y: torch.Tensor, rows: torch.Tensor):
            return fn(model, x_in, y, outer[rows])

        return sub_loss


@ATTACKS.register("pgd")
def pgd_attack(norm: NormName = "linf", random_start: StartName = "auto", bn: BNMode = "eval",
               restarts: int = 1) -> Attack:
    """Projected gradient descent (Madry et al. 2018) with per-sample eps / step / steps."""
    require_in(restarts, "attack.restarts", 1, MAX_RESTARTS)
    return Attack("pgd", pgd, norm=norm, random_start=random_start, bn=bn, restarts=restarts)
