"""FAT — friendly adversarial training (Zhang et al. 2020, "Attacks which do not kill training
make adversarial learning stronger", Alg. 1 "PGD-K-tau").

PGD-K whose every sample stops tau steps after it is first misclassified: the engine counts
the checks at which a sample is misclassified and freezes it at the (tau + 1)-th
(``AttackPlan.stop_misclassified``), as the authors' ``earlystop`` does; tau >= K is plain
PGD-K. With eval-mode BatchNorm in the attack (the default) frozen samples leave the working
batch, so an early-stopped batch is cheaper than PGD-K. Dynamic tau: ``tau[j]`` applies from
0-based epoch ``tau_epochs[j - 1]`` on. eps and step_size: one float each for every sample,
in [0, 1] image units. Telemetry per epoch: ``tau``, ``mean_steps``, ``frac_early_stop``.
The authors' tau schedules, random starts and decisions: docs/baselines.md.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..attacks.plan import AttackPlan
from ..component import MAX_EPOCHS, MAX_STEPS, Series, require, require_in
from ..context import Batch, Feedback, RunContext
from .base import STRATEGIES, Strategy, pct


@STRATEGIES.register("fat", budgets=("eps", "step_size"))
class FAT(Strategy):
    """FAT: PGD-K that stops each sample tau steps after its first misclassification; tau by epoch."""

    # how adaptrain report shows end_epoch's columns
    telemetry = {
        "tau": Series("tau (steps after the first misclassification)", floor=1.0),
        "mean_steps": Series("mean attack steps per sample", floor=1.0),
        "frac_early_stop": Series("share of samples stopped early", floor=0.05),
    }

    def __init__(self, ctx: RunContext, eps: float = 8 / 255, step_size: float = 2 / 255,
                 steps: int = 10, tau: list[int] = [0, 1, 2],  # noqa: B006 - copied below
                 tau_epochs: list[int] = [50, 90]) -> None:  # noqa: B006
        super().__init__(ctx)
        require(eps >= 0, "strategy.eps", f"must be >= 0, got {eps}")
        require(step_size >= 0, "strategy.step_size", f"must be >= 0, got {step_size}")
        require_in(steps, "strategy.steps", 1, MAX_STEPS)
        require(len(tau) >= 1 and all(0 <= t <= MAX_STEPS for t in tau), "strategy.tau",
                f"must be a non-empty list of integers in [0, {MAX_STEPS}], got {tau}")
        for e in tau_epochs:
            require_in(e, "strategy.tau_epochs", 0, MAX_EPOCHS)
        require(len(tau_epochs) == len(tau) - 1, "strategy.tau_epochs",
                f"needs one epoch per tau change: {len(tau) - 1} for tau {tau}, got {tau_epochs}")
        require(all(e >= 0 for e in tau_epochs)
                and all(a < b for a, b in zip(tau_epochs, tau_epochs[1:], strict=False)),
                "strategy.tau_epochs", f"must be increasing epochs >= 0, got {tau_epochs}")
        self.eps, self.step_size, self.steps = eps, step_size, steps
        self.taus, self.tau_epochs = list(tau), list(tau_epochs)
        self.tau = self.tau_at(0)
        self._steps_sum: torch.Tensor | int = 0
        self._early: torch.Tensor | int = 0
        self._seen = 0

    def tau_at(self, epoch: int) -> int:
        """tau in effect during ``epoch`` (0-based)."""
        return self.taus[sum(epoch >= e for e in self.tau_epochs)]

    def start_epoch(self, epoch: int) -> None:
        self.tau = self.tau_at(epoch)
        self._steps_sum, self._early, self._seen = 0, 0, 0

    def plan(self, batch: Batch) -> AttackPlan:
        return AttackPlan(eps=self.eps, step_size=self.step_size, steps=self.steps,
                          stop_misclassified=self.tau)

    def observe(self, fb: Feedback) -> None:
        used = fb.result.steps_used
        self._steps_sum = self._steps_sum + used.sum()  # stays on the device: no host sync
        self._early = self._early + (used < self.steps).sum()
        self._seen += used.shape[0]

    def end_epoch(self, epoch: int) -> dict[str, float]:
        sums = torch.tensor([float(self._steps_sum), float(self._early), float(self._seen)],
                            dtype=torch.float64)
        self.ctx.world.sum_(sums)  # over the ranks' shards
        steps_sum, early, seen = sums.tolist()
        n = max(seen, 1)
        return {"tau": float(self.tau), "mean_steps": steps_sum / n, "frac_early_stop": early / n}

    def summary(self, telemetry: dict[str, float], eps_text: Callable[[float], str]) -> str:
        """tau, mean steps used and the share stopped early."""
        return (f"tau {self.tau} steps {telemetry['mean_steps']:.1f} "
                f"early {pct(telemetry['frac_early_stop'])}")
