"""Single-step attacks for fast adversarial training: FGSM, FGSM-RS and N-FGSM.

All three are one step of the PGD engine (``engine.run`` via :func:`pgd` with ``steps = 1``)
from a start that defines the method; the step length is a multiple of each sample's own
budget, so any strategy drives them through the per-sample ``eps`` (B,) of its plan. The plan's
``step_size`` is ignored, ``steps > 1`` counts as one step and a sample planned with
``steps == 0`` is returned unchanged. Shapes: x (B, C, H, W) in [0, 1], y (B,); budgets in
[0, 1] image units. Cost: 1 forward + 1 input-gradient backward per batch.

* ``fgsm`` (Goodfellow et al. 2015): delta = step * eps * sign(grad L(x)) from zero, projected
  to the eps-ball. The attack GradAlign (Andriushchenko & Flammarion 2020) trains on. When the
  objective asks for TRADES's 0.001 * N(0, 1) start (its KL loss has a zero gradient at x, so
  FGSM from zero would not move), FGSM starts there instead.
* ``fgsm_rs`` (Wong et al. 2020, "Fast is better than free", Alg. 3): delta_0 ~ U(B(eps)),
  delta = Proj_eps(delta_0 + alpha * sign(grad L(x + delta_0))) with alpha = 1.25 eps.
* ``n_fgsm`` (de Jorge et al. 2022, "Make some noise", Alg. 1): eta ~ U(B(k * eps)) with k = 2,
  delta = eta + alpha * sign(grad L(x + eta)) with alpha = eps and **no** projection back to the
  eps-ball (||delta||_inf may reach (k + 1) * eps); x + delta is still clipped to [0, 1].

With ``norm: l2`` (or ``l1``) the same rules apply with the norm's steepest direction and
ball. The uniform starts of FGSM-RS and N-FGSM are part of their definitions, so they override
the objective's choice.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from ..component import MAX_MULTIPLE, require, require_in
from ..registry import Traits
from .base import ATTACKS, Attack, BNMode, NormName
from .losses import LossFn
from .pgd import pgd
from .plan import AttackPlan, AttackResult


def single_step(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    plan: AttackPlan,
    *,
    step: float,
    noise: float = 1.0,
    project: bool = True,
    generator: torch.Generator | None = None,
    loss_fn: LossFn | None = None,
    final_eval: bool = False,
) -> AttackResult:
    """One engine step of length ``step * eps_i`` from the plan's start: ``uniform`` with
    radius ``noise * eps_i``, ``none`` (x itself) or TRADES's 0.001 * N(0, 1) (``normal``);
    ``project=False`` skips the projection onto the eps-ball."""
    eps, _, steps = plan.tensors(x.shape[0], x.device)
    one = plan.replace(eps=eps, step_size=step * eps, steps=steps.clamp(max=1),
                       random_start=plan.random_start or "none", init_scale=noise, project=project)
    return pgd(model, x, y, one, generator=generator, loss_fn=loss_fn, final_eval=final_eval)


ONE_STEP = Traits(single_step=True)  # training watches these for catastrophic overfitting


def _check_bn(bn: str) -> None:
    require(bn in ("eval", "train"), "attack.bn", f"{bn!r}; allowed: eval, train")


@ATTACKS.register("fgsm", traits=ONE_STEP)
def fgsm_attack(step: float = 1.0, norm: NormName = "linf", bn: BNMode = "eval") -> Attack:
    """FGSM from zero (Goodfellow et al. 2015): step = ``step`` * eps (default 1.0 * eps)."""
    require_in(step, "attack.step", 0, MAX_MULTIPLE, low_open=True, why="a multiple of eps")
    _check_bn(bn)
    return Attack("fgsm", partial(single_step, step=step), norm=norm, random_start="auto",
                  bn=bn, default_start="none")


@ATTACKS.register("fgsm_rs", traits=ONE_STEP)
def fgsm_rs_attack(step: float = 1.25, norm: NormName = "linf", bn: BNMode = "eval") -> Attack:
    """FGSM-RS (Wong et al. 2020): uniform start in eps, step 1.25 * eps, projected to eps."""
    require_in(step, "attack.step", 0, MAX_MULTIPLE, low_open=True, why="a multiple of eps")
    _check_bn(bn)
    return Attack("fgsm_rs", partial(single_step, step=step), norm=norm,
                  random_start="uniform", bn=bn)


@ATTACKS.register("n_fgsm", traits=ONE_STEP)
def n_fgsm_attack(k: float = 2.0, step: float = 1.0, norm: NormName = "linf",
                  bn: BNMode = "eval") -> Attack:
    """N-FGSM (de Jorge et al. 2022): noise U(-k eps, k eps) with k 2, step 1.0 * eps, no projection."""
    require_in(k, "attack.k", 0, MAX_MULTIPLE, why="the noise radius as a multiple of eps")
    require_in(step, "attack.step", 0, MAX_MULTIPLE, low_open=True, why="a multiple of eps")
    _check_bn(bn)
    return Attack("n_fgsm", partial(single_step, step=step, noise=k, project=False), norm=norm,
                  random_start="uniform" if k > 0 else "auto", bn=bn, default_start="none")
