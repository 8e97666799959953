"""SAAT: strength-adaptive adversarial training (the SAAT paper, Algorithm 2).

The strategy plans SA-PGD (``attacks/sa_pgd.py``, Algorithm 1) for every batch: each sample's
budget is searched upwards until its loss reaches the minimum adversarial loss rho (Eq. 5),
at most eps_max. The model is then trained on the result by whatever objective is configured
(PGD-AT's CE; TRADES, whose inner KL loss becomes the constrained loss: SA-TRADES), with or
without AWP.

Field split: this strategy owns the per-sample budget and stop rule (rho, eps_max, K,
alpha), planned as ``eps`` = eps_max, ``step_size`` = alpha, ``steps`` = K and ``stop_loss`` =
rho; the ``attack:`` section (``name: sa_pgd``) owns how the search moves (eps_0 or the warm
start, tau), norm, random start and BatchNorm mode.

Telemetry per epoch (``RUN/strategy.csv``), over the samples seen in the epoch:
``eps_share_<k>`` the share of samples whose final budget is k/255 (one column for every
integer k from 0 to eps_max, so the set is fixed for a run),
``mean_eps`` (in 1/255 units), ``loss_mean`` / ``loss_q10`` / ``loss_q50`` / ``loss_q90`` of
the final adversarial loss, ``frac_below_rho`` (samples that never reached rho) and
``mean_steps`` (gradient steps per sample, warm start included).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from ..attacks.plan import AttackPlan
from ..component import MAX_STEPS, Series, require, require_in
from ..context import Batch, Feedback, RunContext
from ..registry import InfFloat, Traits
from .base import STRATEGIES, Strategy, pct

QUANTILES = (0.1, 0.5, 0.9)
# adaptrain eval's default curve for SAAT runs: the paper's robustness disparity (RD) budgets
RD_CURVE = Traits(eval_curve=(0.0, 2 / 255, 4 / 255, 8 / 255, 12 / 255, 16 / 255))


def search_fits(sections: dict[str, dict[str, Any]]) -> None:
    """The sa_pgd search (attack section) starts inside eps_max and ends within MAX_STEPS."""
    strategy, attack = sections["strategy"], sections["attack"]
    eps_max, start = strategy["eps_max"], attack["eps_0"]
    if attack["warm_start"]:
        start = attack["warm_eps"]
        require(start <= eps_max, "attack.warm_eps",
                f"must be at most strategy.eps_max ({eps_max:.6g}) with warm_start, got {start:.6g}")
    require(attack["eps_0"] <= eps_max, "attack.eps_0",
            f"must be at most strategy.eps_max ({eps_max:.6g}), got {attack['eps_0']:.6g}")
    tau = attack["tau"]
    rounds = 1 if tau is None else max(1, math.ceil((eps_max - start) / tau))
    require(rounds * strategy["steps"] <= MAX_STEPS, "attack.tau",
            f"the search takes up to {rounds} rounds of {strategy['steps']} steps per sample; at "
            f"most {MAX_STEPS} steps: raise attack.tau or lower strategy.steps")


@STRATEGIES.register("saat", requires={"attack": "sa_pgd"}, cross_check=search_fits,
                     traits=RD_CURVE)
class SAAT(Strategy):
    """Strength-adaptive AT: per-sample budgets searched by SA-PGD until loss >= rho."""

    state_keys = ("eps_last", "loss_last", "steps_last", "reached_last", "seen")
    # how adaptrain report shows end_epoch's columns (budgets in 1/255, losses in nats)
    telemetry = {
        "eps_share": Series("share of samples per final budget ε (/255)"),
        "mean_eps": Series("mean final budget ε (/255)", floor=1.0),
        "loss_mean": Series("mean adversarial loss (nats)", floor=0.2),
        "loss_q10": Series("adversarial loss, 10th percentile (nats)", floor=0.2),
        "loss_q50": Series("adversarial loss, median (nats)", floor=0.2),
        "loss_q90": Series("adversarial loss, 90th percentile (nats)", floor=0.2),
        "frac_below_rho": Series("share of samples ending below rho", floor=0.05),
        "mean_steps": Series("mean attack steps per sample", floor=1.0),
    }

    def __init__(self, ctx: RunContext, rho: InfFloat = 1.5, eps_max: float = 8 / 255,
                 step_size: float = 2 / 255, steps: int = 3) -> None:
        """rho: minimum adversarial loss (<= 0: natural training; .inf: always eps_max).
        eps_max: largest budget; steps (K) PGD steps of step_size (alpha) per round of the
        search (the attack section sets where it starts and tau). Budgets in [0, 1] units."""
        super().__init__(ctx)
        require(not math.isnan(rho), "strategy.rho", "must be a number (.inf allowed)")
        require(0 < eps_max <= 1, "strategy.eps_max", f"must be in (0, 1], got {eps_max}")
        require_in(step_size, "strategy.step_size", 0, 1, low_open=True)
        require_in(steps, "strategy.steps", 1, MAX_STEPS)
        self.rho, self.eps_max, self.step_size, self.steps = float(rho), eps_max, step_size, steps
        # telemetry bins in 1/255 units: every integer budget up to eps_max
        self.bin_lo = 0
        self.bin_hi = round(255 * eps_max)
        n, device = ctx.num_train, ctx.device
        self.eps_last = torch.zeros(n, device=device)
        self.loss_last = torch.zeros(n, device=device)
        self.steps_last = torch.zeros(n, dtype=torch.int64, device=device)
        self.reached_last = torch.zeros(n, dtype=torch.bool, device=device)
        self.seen = torch.zeros(n, dtype=torch.bool, device=device)

    def plan(self, batch: Batch) -> AttackPlan:
        return AttackPlan(eps=self.eps_max, step_size=self.step_size, steps=self.steps,
                          stop_loss=self.rho)

    def start_epoch(self, epoch: int) -> None:
        self.seen.zero_()

    def observe(self, fb: Feedback) -> None:
        # the whole global batch's rows on every rank, so the tables (and checkpoints) agree
        # (one collective: the five columns travel as one float64 table, exact for indices,
        # step counts and flags)
        res, dev = fb.result, self.seen.device
        cols = torch.stack([fb.batch.idx.to(dev).double(), res.info["eps"].double(),
                            res.loss.double(), res.steps_used.double(),
                            res.info["reached"].double()], dim=1)
        idx, eps, loss, steps, reached = self.ctx.world.gather_rows(cols, fb.batch.rows.total).T
        idx = idx.long()
        self.eps_last[idx] = eps.float()
        self.loss_last[idx] = loss.float()
        self.steps_last[idx] = steps.long()
        self.reached_last[idx] = reached.bool()
        self.seen[idx] = True

    def end_epoch(self, epoch: int) -> dict[str, float]:
        seen = self.seen
        if not bool(seen.any()):
            return {}
        units = self.eps_last[seen] * 255
        bins = units.round().long().clamp(self.bin_lo, self.bin_hi) - self.bin_lo
        shares = torch.bincount(bins, minlength=self.bin_hi - self.bin_lo + 1).float() / bins.numel()
        loss = self.loss_last[seen]
        q = torch.quantile(loss, torch.tensor(QUANTILES, device=loss.device))
        summary = torch.stack([units.mean(), loss.mean(), *q,
                               1 - self.reached_last[seen].float().mean(),
                               self.steps_last[seen].float().mean()]).tolist()  # one host sync
        out = {f"eps_share_{self.bin_lo + j}": v for j, v in enumerate(shares.tolist())}
        out["mean_eps"] = summary[0]
        out["loss_mean"] = summary[1]
        for p, v in zip(QUANTILES, summary[2:2 + len(QUANTILES)], strict=True):
            out[f"loss_q{round(100 * p)}"] = v
        out["frac_below_rho"], out["mean_steps"] = summary[-2], summary[-1]
        return out

    def summary(self, telemetry: dict[str, float], eps_text: Callable[[float], str]) -> str:
        """Mean searched budget, share that never reached rho, mean attack steps."""
        if "mean_eps" not in telemetry:
            return ""
        return (f"eps {eps_text(telemetry['mean_eps'] / 255)} below rho "
                f"{pct(telemetry['frac_below_rho'])} steps {telemetry['mean_steps']:.1f}")
