"""The DRA fine-tuning budget schedule (Hou et al., Section V-A): eps decays linearly from
eps_start to eps_end over the first ``decay_epochs`` epochs, stays at eps_end, and the last
``clean_epochs`` epochs of the run are clean only (zero attack steps: no attack passes).

Per epoch e (0-based), with E the run's epochs:
  e >= E - clean_epochs        -> clean (steps 0)
  e <  decay_epochs            -> eps_start + (eps_end - eps_start) * e / (decay_epochs - 1)
  otherwise                    -> eps_end
so the paper's CIFAR-10 run (E 60, decay 50, clean 10) attacks at 2 in epoch 1 and 0.5 in
epoch 50 (1-based) and trains on clean images in epochs 51-60. Budgets are in [0, 1] units in
the DRA attack's budget convention (``attack.budget``; default per coordinate, so the paper's
"2 -> 0.5" is 2/255 -> 0.5/255). The plan's steps (1) only switch the DRA attack on; T is
``attack.steps``. Stateless: the plan depends only on the batch's epoch, so resume is exact.
"""

from __future__ import annotations

from collections.abc import Callable

from ..attacks.plan import AttackPlan
from ..component import MAX_EPOCHS, Series, require, require_in
from ..context import Batch, RunContext
from .base import STRATEGIES, Strategy


@STRATEGIES.register("dra_schedule", budgets=("eps_start", "eps_end"))
class DRASchedule(Strategy):
    """DRA fine-tuning: eps linear eps_start -> eps_end over decay_epochs, then a clean-only tail."""

    # how adaptrain report shows end_epoch's columns (eps in the attack's own units)
    telemetry = {
        "mean_eps": Series("DRA budget ε of the epoch"),
        "clean_only": Series("clean-only epoch (1) or clean + DRA (0)", floor=1.0),
    }

    def __init__(self, ctx: RunContext, eps_start: float = 2 / 255, eps_end: float = 0.5 / 255,
                 decay_epochs: int = 50, clean_epochs: int = 10) -> None:
        super().__init__(ctx)
        require(eps_start >= 0, "strategy.eps_start", f"must be >= 0, got {eps_start}")
        require(eps_end >= 0, "strategy.eps_end", f"must be >= 0, got {eps_end}")
        require_in(decay_epochs, "strategy.decay_epochs", 1, MAX_EPOCHS)
        require_in(clean_epochs, "strategy.clean_epochs", 0, MAX_EPOCHS)
        require(decay_epochs + clean_epochs <= ctx.epochs, "strategy.decay_epochs",
                f"decay_epochs {decay_epochs} + clean_epochs {clean_epochs} exceed the run's "
                f"{ctx.epochs} epochs; lower them (e.g. strategy.decay_epochs="
                f"{max(1, ctx.epochs - clean_epochs)}) or raise epochs")
        self.eps_start, self.eps_end = eps_start, eps_end
        self.decay_epochs, self.clean_epochs = decay_epochs, clean_epochs

    def clean(self, epoch: int) -> bool:
        return epoch >= self.ctx.epochs - self.clean_epochs

    def eps_at(self, epoch: int) -> float:
        """The budget of 0-based ``epoch`` (0.0 in the clean-only tail)."""
        if self.clean(epoch):
            return 0.0
        if epoch >= self.decay_epochs - 1:
            return self.eps_end
        frac = epoch / (self.decay_epochs - 1)
        return self.eps_start + (self.eps_end - self.eps_start) * frac

    def plan(self, batch: Batch) -> AttackPlan:
        epoch = batch.step.epoch
        eps = self.eps_at(epoch)
        steps = 0 if self.clean(epoch) or eps == 0 else 1
        return AttackPlan(eps=eps, step_size=eps, steps=steps)

    def end_epoch(self, epoch: int) -> dict[str, float]:
        return {"mean_eps": self.eps_at(epoch), "clean_only": float(self.clean(epoch))}

    def summary(self, telemetry: dict[str, float], eps_text: Callable[[float], str]) -> str:
        """The epoch's budget, or that the epoch trained on clean images only."""
        return "clean" if telemetry["clean_only"] else f"eps {eps_text(telemetry['mean_eps'])}"
