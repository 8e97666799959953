"""DRA: the dynamically regulated adversary (Hou et al., "Adversarial Fine-tune with
Dynamically Regulated Adversary", Algorithm 1).

T steps of L1-normalised gradient ascent from the clean image (no sign, no projection),
x_{t+1} = x_t + alpha * g_t / ||g_t||_1 with alpha = budget / T; then the perturbation is kept
only on the top-p fraction of the C*H*W coordinates ranked by |gradient| (per sample) and the
other coordinates are reset to their clean values; the image stays in [0, 1].

Threat model and units (the paper's eps unit is ambiguous; this is our decision, see
docs/dra.md). ``eps`` is in [0, 1] image units, per sample (B,):

* ``budget="per_coordinate"`` (default): eps is the *mean* absolute change per coordinate,
  i.e. ||x_dra - x||_1 <= eps * C*H*W. This is the L1 size of an L-inf perturbation of size
  eps applied to every coordinate, so DRA's eps is written like PGD's (the paper's CIFAR-10
  schedule 2 -> 0.5 means 2/255 -> 0.5/255, MNIST 0.1 stays 0.1) and, at equal eps, DRA
  gains at least as much loss as PGD to first order (Cauchy-Schwarz), which is the paper's
  "DRA is stronger than PGD for the same eps" (DRA 1 matched PGD 2.55 in Table V).
* ``budget="total"``: the literal reading, ||x_dra - x||_1 <= eps.

Either way the bound is exact: each step has L1 length alpha, clipping to [0, 1] and the
mask only shrink coordinates. ``adaptrain calibrate-dra`` finds the PGD L-inf eps that gives
the same robust accuracy on a given model.

Ranking: Algorithm 1 ranks by "grad_x L(x_t*, y)", a single iterate's gradient; we use the
gradient at the last iterate the engine evaluated for each sample (the one that made its
final step; passes over it once frozen, as padding or under masking, do not count), which
costs no extra pass. ``rank="accumulated"`` ranks by |x_T - x| instead
(the sum of the normalised steps). Only the plan's eps matters; the plan's ``step_size`` is
ignored (alpha = budget / T) and its ``steps`` act as a gate (0: the sample is returned
unchanged, no passes) unless ``attack.steps`` is null, in which case they are T.

Shapes: x (B, C, H, W) in [0, 1], y (B,), plan tensors (B,). Cost: T forward + backward
passes per attacked sample (active-set compaction as in PGD), nothing else.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

from ..component import MAX_STEPS, require_in
from ..threat import Draws, bcast, clip_box, draw, norm, per_sample, random_delta
from . import engine
from .base import ATTACKS, Attack, BNMode
from .losses import LossFn, make_loss
from .plan import AttackPlan, AttackResult

BudgetName = Literal["per_coordinate", "total"]
RankName = Literal["last", "accumulated"]
DraStart = Literal["auto", "none", "normal", "uniform"]

# A random start (TRADES asks for one: its KL loss has a zero gradient at x) takes at most
# this share of the L1 budget, and the T steps share the rest, so the bound stays exact.
START_SHARE = 0.1
_TRADES_NOISE = 1e-3  # TRADES's start is 0.001 * N(0, 1)


def keep_count(p: float, dim: int) -> int:
    """Number of coordinates DRA keeps: round(p * dim), halves rounded up."""
    return min(dim, int(math.floor(p * dim + 0.5)))


def top_mask(score: torch.Tensor, k: int) -> torch.Tensor:
    """(B, ...) scores -> bool mask of the same shape with exactly ``k`` True per sample, at the
    ``k`` largest scores (ties broken by ``torch.topk``)."""
    flat = score.flatten(1)
    mask = torch.zeros_like(flat, dtype=torch.bool)
    if k > 0:
        mask.scatter_(1, flat.topk(k, dim=1, sorted=False).indices, True)
    return mask.view_as(score)


def _start(x: torch.Tensor, budget: torch.Tensor, kind: str,
           generator: Draws) -> torch.Tensor:
    """Random start inside START_SHARE of each sample's L1 budget (zeros for ``none``)."""
    if kind == "none":
        return torch.zeros_like(x)
    cap = START_SHARE * budget
    if kind == "normal":
        delta = _TRADES_NOISE * draw(torch.randn, x.shape, generator, device=x.device,
                                     dtype=x.dtype)
        l1 = norm(delta, "l1")
        delta = delta * bcast(torch.clamp(cap / (l1 + 1e-12), max=1.0), delta)
    elif kind == "uniform":
        delta = random_delta(x, cap, "l1", "uniform", generator)
    else:
        raise ValueError(f"unknown random start {kind!r}; allowed: none, normal, uniform")
    return clip_box(x, delta)


def dra(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    plan: AttackPlan,
    *,
    p: float = 1 / 3,
    steps: int | None = 5,
    budget: str = "per_coordinate",
    rank: str = "last",
    generator: torch.Generator | None = None,
    loss_fn: LossFn | None = None,
    final_eval: bool = False,
) -> AttackResult:
    """Run DRA with ``plan``'s per-sample eps; returns x_dra (B, C, H, W) in [0, 1].

    ``info['kept']``: (B,) number of coordinates allowed to differ from x (round(p * C*H*W)
    for attacked samples, 0 otherwise). ``loss`` is the loss at x_dra when ``final_eval``
    (one extra forward, no backward), NaN otherwise: the engine's last loss is that of the
    unmasked iterate.
    """
    B = x.shape[0]
    dim = x[0].numel() if B else 0
    bn = plan.bn or "eval"
    if loss_fn is None:
        loss_fn = make_loss(plan.loss, plan.ref_logits)
    eps = per_sample(plan.eps, B, device=x.device)
    plan_steps = per_sample(plan.steps, B, device=x.device, dtype=torch.int64)
    attacked = (plan_steps > 0) & (eps > 0)
    T = plan_steps if steps is None else torch.full_like(plan_steps, steps)
    T = torch.where(attacked, T, torch.zeros_like(T))
    k = keep_count(p, dim)
    with engine.frozen_model(model, bn):
        if B == 0 or k == 0 or not bool(attacked.any()):  # nothing to perturb: no passes
            x_dra, steps_used = x.detach().clone(), torch.zeros_like(T)
            attacked = torch.zeros_like(attacked)
        else:
            x_dra, steps_used = _steps_and_mask(model, x, y, plan, eps, T, attacked, k,
                                                budget=budget, rank=rank, loss_fn=loss_fn,
                                                generator=generator, compact=bn == "eval")
        loss = torch.full((B,), float("nan"), device=x.device)
        if final_eval and B:
            with torch.no_grad():
                loss = loss_fn(model, x_dra, y, torch.arange(B, device=x.device))[0].float()
    kept = torch.where(attacked, k, 0)
    return AttackResult(x_adv=x_dra, loss=loss, steps_used=steps_used,
                        info={"eps": eps, "kept": kept})


def _steps_and_mask(model: nn.Module, x: torch.Tensor, y: torch.Tensor, plan: AttackPlan,
                    eps: torch.Tensor, n_steps: torch.Tensor, attacked: torch.Tensor, k: int, *,
                    budget: str, rank: str, loss_fn: LossFn, generator: torch.Generator | None,
                    compact: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The T = n_steps engine steps (model already frozen), then the top-k mask: (x_dra, steps_used)."""
    B, dim = x.shape[0], x[0].numel()
    l1_budget = eps * dim if budget == "per_coordinate" else eps
    delta0 = _start(x, l1_budget, plan.random_start or "none", generator)
    delta0 = delta0 * bcast(attacked, delta0)
    alpha = (l1_budget - norm(delta0, "l1")).clamp_min(0) / n_steps.clamp_min(1)
    score = torch.zeros_like(x)

    def record_gradient(xs: torch.Tensor, new: torch.Tensor, grad: torch.Tensor,
                        rows: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        # the gradient at each active row's current iterate, so a row keeps the one at the
        # iterate where it made its last step (or a stop rule froze it). Rows forwarded while
        # frozen (padding, masking under bn=train) keep theirs: a sample's kept coordinates
        # must not depend on the other samples of its batch
        fresh = torch.where(bcast(act, grad), grad.abs().to(score.dtype), score[rows])
        score.index_copy_(0, rows, fresh)
        return new

    def rule(value, dtype=torch.float32):
        return None if value is None else per_sample(value, B, device=x.device, dtype=dtype)

    res = engine.run(
        model, x, y, delta0, eps=eps, step_size=alpha, steps=n_steps, norm="l1", loss_fn=loss_fn,
        direction=plan.direction, project_ball=False, stop_loss=rule(plan.stop_loss),
        stop_misclassified=rule(plan.stop_misclassified, torch.int64), compact=compact,
        post_step=record_gradient if rank == "last" else None,
    )
    if rank == "accumulated":
        score = (res.x_adv - x).abs()
    keep = top_mask(score, k) if k < dim else torch.ones_like(x, dtype=torch.bool)
    x_dra = torch.where(keep & bcast(attacked, x), res.x_adv, x).detach()
    return x_dra, res.steps_used


@ATTACKS.register("dra")
def dra_attack(p: float = 1 / 3, steps: int | None = 5, budget: BudgetName = "per_coordinate",
               rank: RankName = "last", random_start: DraStart = "auto",
               bn: BNMode = "eval") -> Attack:
    """DRA (Hou et al., Algorithm 1): T L1-normalised steps, keep the top-p |grad| coordinates."""
    require_in(p, "attack.p", 0, 1, low_open=True, why="the kept fraction of coordinates")
    if steps is not None:
        require_in(steps, "attack.steps", 1, MAX_STEPS)

    def run_dra(model: nn.Module, x: torch.Tensor, y: torch.Tensor, plan: AttackPlan, *,
                generator: torch.Generator | None = None, loss_fn: LossFn | None = None,
                final_eval: bool = False) -> AttackResult:
        return dra(model, x, y, plan, p=p, steps=steps, budget=budget, rank=rank,
                   generator=generator, loss_fn=loss_fn, final_eval=final_eval)

    return Attack("dra", run_dra, norm="l1", random_start=random_start, bn=bn,
                  default_start="none", fixed_norm=True)
