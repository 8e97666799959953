"""Strength-adaptive PGD (SA-PGD): the budget of each sample grows until its loss reaches rho.

SAAT paper ("Strength-Adaptive Adversarial Training", Algorithm 1; the constraint is Eq. 5,
loss(f(x + delta_i), y_i) >= rho). Every sample starts at budget eps_0; while its loss is
below rho and its budget below eps_max, the budget is raised by tau (clamped to eps_max, as
the authors' code does) and K PGD steps of size alpha are taken inside it. The loss is
checked before the first step and after every step, and a sample freezes as soon as its loss
>= rho. Threat model: ||delta_i||_p <= eps_i (the final budget of sample i, at most eps_max),
x + delta in [0, 1]. Shapes: x (B, C, H, W) in [0, 1], y (B,), budgets (B,) in [0, 1] units.

Two directions:
  * ``eps_0 = 0`` (the paper's general form; SAAT_down when eps_max = 8/255): the first check
    is at the clean input, so a sample whose clean loss is already >= rho is not perturbed at
    all — rho <= 0 is natural training.
  * warm start (SAAT_up, the authors' released code): standard PGD (10 steps of 2/255 at
    8/255, uniform random start, no early stop) first; then only the samples whose loss is
    still below rho continue upwards from the PGD perturbation, at budgets 8 + tau, ...

Batching: all active samples share the round structure (a sample that is still active after
t steps is in round t // K), so the whole search is one run of the shared engine with the
budget schedule eps(t) = min(eps_0 + (t // K + 1) * tau, eps_max), per-sample step counts
K * ceil((eps_max - eps_0) / tau) and the early-stop rule loss >= rho. Frozen samples leave
the working batch (active-set compaction) with BatchNorm in eval mode, and are masked in train
mode. The loss of a step is checked by the forward pass of the next step, so checking costs
no extra pass; only samples that used all their steps get one extra forward (no backward) so
that the returned loss is that of every sample's final iterate.

The search settings (eps_0, tau, warm start) are fields of the ``attack:`` section
(:class:`SAPGDSettings`); the plan carries the per-sample budget: ``eps`` = eps_max,
``step_size`` = alpha, ``steps`` = K (steps per round), ``stop_loss`` = rho (None: no
constraint, i.e. rho = inf), ``loss`` = the constrained loss (ce, or TRADES's kl with
``ref_logits``). With the default settings the attack is one round of K steps at eps_max
from the clean input (plain PGD without random start).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial

import torch
from torch import nn

from ..component import MAX_STEPS, require, require_in
from ..threat import bcast, clip_box, per_sample, project, random_delta
from . import engine
from .base import ATTACKS, Attack, BNMode, NormName, StartName
from .losses import LossFn, make_loss
from .pgd import pgd
from .plan import AttackPlan, AttackResult, Scalar

# Rounds are ceil((eps_max - eps_0) / tau); budgets like 14/255 - 8/255 are not exact in
# floating point, so a quotient within this tolerance of an integer counts as that integer.
_ROUND_TOL = 1e-4


@dataclass(frozen=True)
class SAPGDSettings:
    """SA-PGD's search settings (the ``attack:`` section's fields); budgets in [0, 1] units.

    eps_0: starting budget (scalar or (B,)); ignored with ``warm_start`` (the search then
        starts at ``warm_eps``).
    tau: budget increment per round (scalar or (B,)); None: eps_max - eps_0 (one round).
    warm_start: run standard PGD (warm_eps, warm_step_size, warm_steps, the plan's random
        start, no early stop) first and continue only where the loss is still below rho.
    """

    eps_0: Scalar = 0.0
    tau: Scalar | None = None
    warm_start: bool = False
    warm_eps: float = 8 / 255
    warm_step_size: float = 2 / 255
    warm_steps: int = 10

    def __post_init__(self) -> None:
        if isinstance(self.tau, (int, float)) and not self.tau > 0:
            raise ValueError(f"SA-PGD's tau must be > 0, got {self.tau}")
        if self.warm_start and self.warm_steps < 1:
            raise ValueError(f"SA-PGD's warm_steps must be >= 1, got {self.warm_steps}")


def sa_pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    plan: AttackPlan,
    *,
    generator: torch.Generator | None = None,
    loss_fn: LossFn | None = None,
    final_eval: bool = True,
    compact: bool | None = None,
    search: SAPGDSettings | None = None,
) -> AttackResult:
    """Run SA-PGD on (x, y); returns x_adv (B, C, H, W) and per-sample diagnostics.

    ``loss`` is the constrained loss at every sample's final iterate (always complete;
    ``final_eval`` is accepted for the attack interface and has no effect), ``steps_used``
    the gradient steps of both phases, ``info['eps']`` the final budget (B,),
    ``info['reached']`` whether loss >= rho, ``info['misclassified']`` at the final iterate.
    ``compact`` defaults to True exactly when BatchNorm is in eval mode during the attack;
    ``search`` None: the default :class:`SAPGDSettings`.
    """
    if plan.direction != 1:
        raise ValueError("sa_pgd maximises its loss up to rho; plan.direction must be +1")
    if plan.stop_misclassified is not None:
        raise ValueError("sa_pgd's only early-stop rule is its loss constraint (plan.stop_loss)")
    s = search or SAPGDSettings()
    norm = plan.norm or "linf"
    bn = plan.bn or "eval"
    start = plan.random_start or "uniform"
    compact = (bn == "eval") if compact is None else compact
    if loss_fn is None:
        loss_fn = make_loss(plan.loss, plan.ref_logits)
    B, device = x.shape[0], x.device
    eps_max, alpha, k = plan.tensors(B, device)
    rho = (torch.full((B,), float("inf"), device=device) if plan.stop_loss is None
           else per_sample(plan.stop_loss, B, device=device))

    with engine.frozen_model(model, bn):
        if s.warm_start:
            warm = pgd(model, x, y, plan.replace(
                eps=s.warm_eps, step_size=s.warm_step_size, steps=s.warm_steps, stop_loss=None,
                restarts=1), generator=generator, loss_fn=loss_fn, compact=compact)
            eps_0 = per_sample(s.warm_eps, B, device=device)
            delta0, warm_steps = warm.x_adv - x, warm.steps_used
        else:
            eps_0 = per_sample(s.eps_0, B, device=device)
            # A start of radius eps_0 (none at all for eps_0 = 0, so the first check is at the
            # clean input); TRADES's 0.001 * N(0, 1) jitter is kept even then, because the KL
            # gradient vanishes at delta = 0. Samples that never move are reset below.
            delta0 = clip_box(x, random_delta(x, plan.init_scale * eps_0, norm, start, generator))
            if start != "normal":
                delta0 = clip_box(x, project(delta0, eps_0, norm))
            warm_steps = torch.zeros(B, dtype=torch.int64, device=device)
        if bool((eps_0 > eps_max + 1e-12).any()):
            raise ValueError("sa_pgd: the starting budget exceeds eps_max")
        gap = (eps_max - eps_0).clamp(min=0)
        tau = gap if s.tau is None else per_sample(s.tau, B, device=device)
        rounds = torch.ceil(gap / tau.clamp(min=1e-12) - _ROUND_TOL).clamp(min=1).to(torch.int64)
        rounds = torch.where(gap > 0, rounds, torch.zeros_like(rounds))
        k_div = k.clamp(min=1)

        def budget(t: int) -> torch.Tensor:  # budget of the step taken after t steps
            r = torch.div(t, k_div, rounding_mode="floor") + 1
            return torch.minimum(eps_0 + r * tau, eps_max)

        res = engine.run(model, x, y, delta0, eps=budget, step_size=alpha, steps=k * rounds,
                         norm=norm, loss_fn=loss_fn, stop_loss=rho, compact=compact,
                         final_eval=True)

    moved = res.steps_used > 0
    eps_final = torch.where(moved, res.info["eps"], eps_0)
    x_adv = res.x_adv
    if not s.warm_start and start == "normal":
        # a sample frozen before its first step keeps no jitter beyond its budget eps_0; its
        # reported loss stays the one checked at the jittered start
        reset = x + clip_box(x, project(x_adv - x, eps_0, norm))
        x_adv = torch.where(bcast(moved, x_adv), x_adv, reset)
    return AttackResult(
        x_adv=x_adv, loss=res.loss, steps_used=warm_steps + res.steps_used,
        info={"eps": eps_final, "reached": res.loss >= rho,
              "misclassified": res.info["misclassified"]})


@dataclass
class SAPGDAttack(Attack):
    """The configured SA-PGD: the search settings are a typed field of the attack."""

    search: SAPGDSettings = field(default_factory=SAPGDSettings)

    def __post_init__(self) -> None:
        self.fn = partial(sa_pgd, search=self.search)


@ATTACKS.register("sa_pgd")
def sa_pgd_attack(norm: NormName = "linf", random_start: StartName = "auto", bn: BNMode = "eval",
                  eps_0: float = 0.0, tau: float | None = 2 / 255, warm_start: bool = False,
                  warm_eps: float = 8 / 255, warm_step_size: float = 2 / 255,
                  warm_steps: int = 10) -> Attack:
    """Strength-adaptive PGD (SAAT, Algorithm 1): per-sample budgets raised until loss >= rho.

    eps_0: starting budget (the paper: 0); tau: budget increase per round (null: one round up
    to the plan's eps_max); warm_start: standard PGD (warm_eps, warm_step_size, warm_steps)
    first, then the search from warm_eps (the authors' code, SAAT_up). [0, 1] units."""
    require_in(eps_0, "attack.eps_0", 0, 1)
    # the warm-start fields even when it is off, so a typo is caught before it is switched on
    for name, value in (("tau", tau), ("warm_eps", warm_eps), ("warm_step_size", warm_step_size)):
        if value is not None:
            require_in(value, f"attack.{name}", 0, 1, low_open=True)
    require_in(warm_steps, "attack.warm_steps", 1, MAX_STEPS)
    require(not (warm_start and eps_0 != 0), "attack.eps_0",
            "must stay 0 with warm_start (the search starts at warm_eps)")
    search = SAPGDSettings(eps_0=eps_0, tau=tau, warm_start=warm_start, warm_eps=warm_eps,
                           warm_step_size=warm_step_size, warm_steps=warm_steps)
    return SAPGDAttack("sa_pgd", sa_pgd, norm=norm, random_start=random_start, bn=bn,
                       search=search)
