"""SAAT: strength-adaptive adversarial training (the SAAT paper, Algorithm 2).

The strategy plans SA-PGD (``attacks/sa_pgd.py``, Algorithm 1) for every batch: each sample's
budget is searched upwards until its loss reaches the minimum adversarial loss rho (Eq. 5),
at most eps_max. The model is then trained on the result by whatever objective is configured
(PGD-AT's CE; TRADES, whose inner KL loss becomes the constrained loss: SA-TRADES), with or
without AWP.

Field split: this strategy owns the search (rho, eps_max, eps_0 or the warm start, tau, K,
alpha), written into the AttackPlan as ``eps`` = eps_max, ``step_size`` = alpha, ``steps`` = K,
``stop_loss`` = rho and ``extras['sa_pgd']`` (:class:`SAPGDSettings`); the ``attack:`` section
(``name: sa_pgd``) owns norm, random start and BatchNorm mode, as for every attack.

Telemetry per epoch (``RUN/strategy.csv``), over the samples seen in the epoch:
``eps_share_<k>`` the share of samples whose final budget is k/255 (one column for every
integer k from the starting budget to eps_max, so the set is fixed for a run),
``mean_eps`` (in 1/255 units), ``loss_mean`` / ``loss_q10`` / ``loss_q50`` / ``loss_q90`` of
the final adversarial loss, ``frac_below_rho`` (samples that never reached rho) and
``mean_steps`` (gradient steps per sample, warm start included).
"""

from __future__ import annotations

import math

import torch

from ..attacks.plan import AttackPlan
from ..attacks.sa_pgd import SAPGDSettings
from ..component import MAX_STEPS, require, require_in
from ..context import Batch, Feedback, RunContext
from ..registry import InfFloat, Traits
from .base import STRATEGIES, Strategy

QUANTILES = (0.1, 0.5, 0.9)
# adaptrain eval's default curve for SAAT runs: the paper's robustness disparity (RD) budgets
RD_CURVE = Traits(eval_curve=(0.0, 2 / 255, 4 / 255, 8 / 255, 12 / 255, 16 / 255))


@STRATEGIES.register("saat", requires={"attack": "sa_pgd"}, traits=RD_CURVE)
class SAAT(Strategy):
    """Strength-adaptive AT: per-sample budgets searched by SA-PGD until loss >= rho."""

    state_keys = ("eps_last", "loss_last", "steps_last", "reached_last", "seen")

    def __init__(self, ctx: RunContext, rho: InfFloat = 1.5, eps_max: float = 8 / 255,
                 eps_0: float = 0.0, tau: float = 2 / 255, step_size: float = 2 / 255,
                 steps: int = 3, warm_start: bool = False, warm_eps: float = 8 / 255,
                 warm_step_size: float = 2 / 255, warm_steps: int = 10) -> None:
        """rho: minimum adversarial loss (<= 0: natural training; .inf: always eps_max).
        eps_max: largest budget; eps_0: starting budget (the paper: 0). tau: budget increase
        per round; steps (K) PGD steps of step_size (alpha) per round. warm_start: standard
        PGD (warm_eps, warm_step_size, warm_steps) first, then the search from warm_eps for
        the samples still below rho (the authors' code, SAAT_up). Budgets in [0, 1] units."""
        super().__init__(ctx)
        require(not math.isnan(rho), "strategy.rho", "must be a number (.inf allowed)")
        require(0 < eps_max <= 1, "strategy.eps_max", f"must be in (0, 1], got {eps_max}")
        require(0 <= eps_0 <= eps_max, "strategy.eps_0", f"must be in [0, eps_max], got {eps_0}")
        # budgets and steps in [0, 1] image units; the warm-start fields even when it is off, so
        # that a typo is caught before someone switches it on
        for name, value in (("tau", tau), ("step_size", step_size), ("warm_eps", warm_eps),
                            ("warm_step_size", warm_step_size)):
            require_in(value, f"strategy.{name}", 0, 1, low_open=True)
        require_in(steps, "strategy.steps", 1, MAX_STEPS)
        require_in(warm_steps, "strategy.warm_steps", 1, MAX_STEPS)
        if warm_start:
            require(eps_0 == 0, "strategy.eps_0",
                    "must stay 0 with warm_start (the search starts at warm_eps)")
            require(0 < warm_eps <= eps_max, "strategy.warm_eps",
                    f"must be in (0, eps_max] with warm_start, got {warm_eps}")
        rounds = math.ceil((eps_max - (warm_eps if warm_start else eps_0)) / tau)
        require(rounds * steps <= MAX_STEPS, "strategy.tau",
                f"the search takes up to {rounds} rounds of {steps} steps per sample; at most "
                f"{MAX_STEPS} steps: raise tau or lower steps")
        self.rho, self.eps_max, self.step_size, self.steps = float(rho), eps_max, step_size, steps
        self.settings = SAPGDSettings(eps_0=eps_0, tau=tau, warm_start=warm_start, warm_eps=warm_eps,
                                      warm_step_size=warm_step_size, warm_steps=warm_steps)
        # telemetry bins in 1/255 units: every integer budget the search can end at
        self.bin_lo = round(255 * (warm_eps if warm_start else eps_0))
        self.bin_hi = round(255 * eps_max)
        n, device = ctx.num_train, ctx.device
        self.eps_last = torch.zeros(n, device=device)
        self.loss_last = torch.zeros(n, device=device)
        self.steps_last = torch.zeros(n, dtype=torch.int64, device=device)
        self.reached_last = torch.zeros(n, dtype=torch.bool, device=device)
        self.seen = torch.zeros(n, dtype=torch.bool, device=device)

    def plan(self, batch: Batch) -> AttackPlan:
        return AttackPlan(eps=self.eps_max, step_size=self.step_size, steps=self.steps,
                          stop_loss=self.rho, extras={"sa_pgd": self.settings})

    def start_epoch(self, epoch: int) -> None:
        self.seen.zero_()

    def observe(self, fb: Feedback) -> None:
        res, idx = fb.result, fb.batch.idx.to(self.seen.device)
        self.eps_last[idx] = res.info["eps"].float()
        self.loss_last[idx] = res.loss.float()
        self.steps_last[idx] = res.steps_used
        self.reached_last[idx] = res.info["reached"]
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
