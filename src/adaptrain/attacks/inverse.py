"""Inverse adversarial examples: perturbations that *lower* the loss (Dong et al., CVPR 2023,
"The Enemy of My Enemy is My Friend: Exploring Inverse Adversaries for Improving Adversarial
Training"). Inverse loss (Eq. 4), per sample, F = penultimate features (``model.features``):

    L_inv(x_inv) = CE(f(x_inv), y) + beta * (||F(x_inv) - F(x)||_1 - ||F(x_inv) - F(x_adv)||_1)

F(x), F(x_adv) are constants supplied by the caller (unused when ``beta = 0``).
:func:`instance_inverse` (IAT, Eq. 3): signed-gradient descent from x by the shared engine
(``direction=-1``). :func:`universal_inverse` (UIAT, Eq. 6, Algorithm 1): x_inv =
clip(x + z_y); each class present in the batch takes one signed descent step of alpha' on its
samples' summed L_inv (scatter-add over y), projected to ||z_c||_inf <= eps'; absent classes
do not move. Both freeze the parameters, run in BatchNorm mode ``bn`` (``eval`` | ``batch``,
running statistics never changed) and restore the model's modes and flags.
Threat model: ||x_inv - x||_inf <= eps', x_inv in [0, 1]. Shapes: x (B, C, H, W), y (B,) int64,
z (num_classes, C, H, W); eps', alpha' in [0, 1] image units (4/255, 1/255 by default).
Why ``batch`` is UIAT's default mode: docs/uiat.md.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..threat import per_sample
from . import engine
from .losses import LossFn

FeatureDistance = Literal["sum", "mean"]


def inverse_loss(beta: float = 1.0, feats_clean: torch.Tensor | None = None,
                 feats_adv: torch.Tensor | None = None,
                 distance: FeatureDistance = "sum") -> LossFn:
    """L_inv (Eq. 4) as an engine loss function ``(model, x_in, y, rows) -> (loss, logits)``.

    feats_clean, feats_adv: (B, D) F(x) and F(x_adv) of the full batch (gathered by ``rows``);
    required when ``beta > 0``. ``distance``: ``sum`` is the L1 norm over the D features
    (METHODS.md); ``mean`` divides it by D (an element-wise mean, as ``nn.L1Loss`` would).
    The model is evaluated once: features, then logits = ``model.head(features)``.
    """
    if beta == 0:
        def ce(model: nn.Module, x_in: torch.Tensor, y: torch.Tensor, rows: torch.Tensor):
            logits = model(x_in)
            return F.cross_entropy(logits.float(), y, reduction="none"), logits
        return ce
    if feats_clean is None or feats_adv is None:
        raise ValueError("the feature regulariser (beta > 0) needs F(x) and F(x_adv)")
    ref, adv = feats_clean.detach().float(), feats_adv.detach().float()
    scale = 1.0 / ref.shape[1] if distance == "mean" else 1.0

    def loss_fn(model: nn.Module, x_in: torch.Tensor, y: torch.Tensor, rows: torch.Tensor):
        feats = model.features(x_in)
        logits = model.head(feats)
        f = feats.float()
        reg = (f - ref[rows]).abs().sum(dim=1) - (f - adv[rows]).abs().sum(dim=1)
        return F.cross_entropy(logits.float(), y, reduction="none") + (beta * scale) * reg, logits

    return loss_fn


@dataclass
class InverseResult:
    """x_inv (B, C, H, W) in [0, 1]; logits (B, C) float32 of the model on x_inv (in the
    attack's BatchNorm mode, no gradient); for the universal variant ``z`` is the updated
    (num_classes, C, H, W)."""

    x_inv: torch.Tensor
    logits: torch.Tensor
    z: torch.Tensor | None = None


def instance_inverse(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, loss_fn: LossFn,
                     eps: float | torch.Tensor = 4 / 255, step_size: float | torch.Tensor = 1 / 255,
                     steps: int | torch.Tensor = 5, bn: str = "eval") -> InverseResult:
    """IAT's instance-wise inverse examples (Eq. 3): ``steps`` signed-gradient descent steps of
    ``step_size`` on ``loss_fn`` from x (no random start), projected to the eps-ball and the
    box. Cost: ``steps`` forward + backward passes, plus one forward for the final logits."""
    B = x.shape[0]
    eps_t = per_sample(eps, B, device=x.device)
    alpha_t = per_sample(step_size, B, device=x.device)
    steps_t = per_sample(steps, B, device=x.device, dtype=torch.int64)
    with engine.frozen_model(model, bn):
        # batch statistics depend on the whole batch: no sample may leave it (masking)
        res = engine.run(model, x, y, torch.zeros_like(x), eps=eps_t, step_size=alpha_t,
                         steps=steps_t, norm="linf", loss_fn=loss_fn, direction=-1,
                         compact=bn == "eval")
        with torch.no_grad():
            logits = model(res.x_adv).float()
    return InverseResult(res.x_adv, logits)


def universal_inverse(model: nn.Module, x: torch.Tensor, y: torch.Tensor, z: torch.Tensor, *,
                      loss_fn: LossFn, eps: float = 4 / 255,
                      step_size: float = 1 / 255, bn: str = "eval",
                      sum_: Callable[..., None] | None = None) -> InverseResult:
    """UIAT's class-universal step (Algorithm 1, lines 7-11). ``z`` is not modified; the
    updated perturbations are returned in ``result.z``. x_inv and its logits use z *before*
    the update (as Algorithm 1 computes L_inv and then steps), so the whole step costs one
    forward and one backward pass over the batch. ``sum_``: an in-place all-reduce of the
    per-class gradient sums and counts when the batch is sharded over ranks."""
    rows = torch.arange(x.shape[0], device=x.device)
    with engine.frozen_model(model, bn):
        delta = z.detach()[y].float().requires_grad_(True)  # (B, C, H, W), fp32 under autocast
        x_inv = (x + delta).clamp(0.0, 1.0)
        loss, logits = loss_fn(model, x_inv, y, rows)
        (grad,) = torch.autograd.grad(loss.float().sum(), delta)
    class_grad = torch.zeros_like(z, dtype=torch.float32).index_add_(0, y, grad)
    count = torch.zeros(z.shape[0], dtype=torch.float32, device=z.device)
    count.index_add_(0, y, torch.ones_like(y, dtype=torch.float32))
    if sum_ is not None:
        sum_(class_grad, count)  # the whole global batch's classes, on every rank
    present = count > 0
    stepped = (z.float() - step_size * class_grad.sign()).clamp(-eps, eps)
    z_new = torch.where(present.view(-1, *([1] * (z.ndim - 1))), stepped, z.float()).to(z.dtype)
    return InverseResult(x_inv.detach(), logits.detach().float(), z_new)
