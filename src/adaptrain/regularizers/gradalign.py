"""GradAlign (Andriushchenko & Flammarion 2020, "Understanding and improving fast adversarial
training", Eq. 6): lam * (1 - cos(grad_x L(x, y), grad_x L(x + eta, y))), eta ~ U(B(eps)).

Per sample, the cosine of the two cross-entropy input gradients (at x and at a random point of
the sample's own eps-ball, eps and norm from the plan) is differentiated w.r.t. the parameters
through both gradients (double backpropagation; ``detach_clean`` keeps the one at x constant);
it penalises the local non-linearity behind catastrophic overfitting. A sample whose gradient
vanishes at either point contributes 0.
Threat model: eta uniform in the plan's norm ball (L-inf by default), eps in [0, 1] image units,
x + eta clipped to [0, 1]. Shapes: x (B, C, H, W), y (B,), returns (B,).
Cost: 2 forward + 2 backward (with graph) and their double backward.
BatchNorm mode, the cached eta shared with AWP's proxy, and decisions: docs/baselines.md.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..attacks.plan import AttackPlan
from ..component import MAX_WEIGHT, require_in
from ..context import Batch, Cached, CacheKey, RunContext, Stream
from ..threat import clip_box, random_delta
from .base import REGULARIZERS, Regularizer

_TINY = 1e-12
ETA = CacheKey(Cached.GRADALIGN_ETA)  # the batch's eta, shared by AWP's proxy and the real step


def _fp32_or_wider(t: torch.Tensor) -> torch.Tensor:
    """bf16 / fp16 (autocast) -> fp32; fp32 and fp64 unchanged."""
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def input_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, create_graph: bool
                   ) -> torch.Tensor:
    """grad_x of the summed cross-entropy at x: (B, C, H, W); per-sample gradients are those of
    each sample's own loss, independent of the batch size."""
    with torch.enable_grad():  # an input gradient is needed even when called under no_grad
        x_in = x.detach().requires_grad_(True)
        loss = F.cross_entropy(_fp32_or_wider(model(x_in)), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x_in, create_graph=create_graph)
    return grad


def cosine(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample cosine of (B, ...) tensors (at least fp32) and whether it is defined (both
    non-zero)."""
    a, b = _fp32_or_wider(a.flatten(1)), _fp32_or_wider(b.flatten(1))
    na, nb = a.norm(dim=1), b.norm(dim=1)
    defined = (na > _TINY) & (nb > _TINY)
    cos = (a * b).sum(dim=1) / (na * nb).clamp_min(_TINY)
    return cos, defined


@REGULARIZERS.register("gradalign")
class GradAlign(Regularizer):
    """GradAlign: lam * (1 - cos(grad at x, grad at x + eta)), double backprop (lam 0.2 at 8/255)."""

    state_keys = ("generator",)

    def __init__(self, ctx: RunContext, lam: float = 0.2, detach_clean: bool = False) -> None:
        """``lam``: weight (the authors use 0.2 at 8/255 on CIFAR-10, log-linear in eps:
        0.02 * 10^(eps_255 / 8)). ``detach_clean=True`` reproduces the authors' code, where
        the gradient at x is a constant and only the one at x + eta is differentiated (cheaper:
        one fewer double backward)."""
        super().__init__(ctx)
        require_in(lam, "regularizer.lam", 0, MAX_WEIGHT, why="a loss weight")
        self.lam = lam
        self.detach_clean = detach_clean
        self.generator = ctx.generator(Stream.GRADALIGN) if ctx is not None else None

    def noise(self, batch: Batch, plan: AttackPlan) -> torch.Tensor:
        """The batch's eta (B, C, H, W), drawn once per batch with x + eta kept in [0, 1]."""
        if ETA not in batch.cache:
            eps, _, _ = plan.tensors(batch.x.shape[0], batch.x.device)
            eta = random_delta(batch.x, eps, plan.norm or "linf", "uniform",
                               batch.draws(self.generator))
            batch.cache[ETA] = clip_box(batch.x, eta)
        return batch.cache[ETA]

    def term(self, model: nn.Module, batch: Batch, x_adv: torch.Tensor, plan: AttackPlan, *,
             commit: bool = True) -> torch.Tensor | None:
        if self.lam == 0:
            return None
        eta = self.noise(batch, plan)
        g_clean = input_gradient(model, batch.x, batch.y, create_graph=not self.detach_clean)
        g_noisy = input_gradient(model, batch.x + eta, batch.y, create_graph=True)
        cos, defined = cosine(g_clean, g_noisy)
        return self.lam * torch.where(defined, 1.0 - cos, torch.zeros_like(cos))
