"""ECAS: entropy-guided cyclical adversarial strategy (Kuurila-Zhang, Chen and Zhao 2023,
"Adaptive Adversarial Norm Space for Efficient Adversarial Training"; Eq. 2, Algorithm 1).

Per batch, every sample gets an L-inf budget eps_i (||delta_i||_inf <= eps_i, x + delta in
[0, 1]): the scheduled budget k comes from a schedule over the integer list
``[eps_min .. eps_max]`` (:mod:`.budget_schedules`; ``cyclic`` is Eq. 2); with ``entropy: true``
(Algorithm 1) the clean softmax entropy H_i (nats, from ``Batch.clean_logits()``, eval mode)
gives H_i > h_high -> the smallest budget, H_i < h_low -> one of the ``n_large`` largest
(seeded uniform draw), otherwise k. Step: alpha_i = step_ratio * eps_i (``ratio``) or the
reference code's 2 * eps_sched / steps (``epoch``).
Units: budgets are integers in ``eps_unit`` (default 1/255); the returned AttackPlan carries
eps in [0, 1] image units. Shapes: x (B, C, H, W), eps / step_size (B,).
Thresholds, calibration, decisions and cost: docs/ecas.md.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from functools import partial
from typing import Annotated, Any, Literal

import torch
import torch.nn.functional as F

from .. import checkpoint
from ..attacks.engine import frozen_model
from ..attacks.plan import AttackPlan
from ..component import MAX_MULTIPLE, MAX_STEPS, Series, require, require_in
from ..context import Batch, RunContext, Stream
from ..errors import CheckpointError, ConfigError
from ..registry import PathOf
from ..threat import Rows, ShardDraws, draw
from .base import STRATEGIES, Strategy, pct
from .budget_schedules import budget_list, scheduled_budget

# (h_high, h_low) in nats from the authors' code, per data set name
DATASET_THRESHOLDS = {"cifar10": (2.274, 1.3), "cifar100": (4.582, 3.35)}
# the CIFAR-10 values as fractions of ln C, for every other data set
H_HIGH_FRACTION, H_LOW_FRACTION = 0.988, 0.565
# thresholds above this are never reached: the entropy of C classes is at most ln C (21 for 1e9)
MAX_ENTROPY = 25.0
# the budget list is materialised and strategy.csv has one column per budget
MAX_BUDGETS = 256

Schedule = Literal["fixed", "linear", "cyclic", "cyclic-batch"]  # = budget_schedules.SCHEDULES


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Softmax entropy in nats per row: (B, C) -> (B,), computed in float32."""
    logp = F.log_softmax(logits.float(), dim=1)
    return -(logp.exp() * logp).sum(dim=1)


def default_thresholds(dataset: str, num_classes: int) -> tuple[float, float]:
    """(h_high, h_low) for a data set: the authors' CIFAR values, else fractions of ln C."""
    if dataset in DATASET_THRESHOLDS:
        return DATASET_THRESHOLDS[dataset]
    h_max = math.log(max(num_classes, 1))
    return H_HIGH_FRACTION * h_max, H_LOW_FRACTION * h_max


@STRATEGIES.register("ecas")
class ECAS(Strategy):
    """ECAS (Kuurila-Zhang et al. 2023): cyclic per-epoch budgets + entropy-guided per-sample budgets."""

    state_keys = ("generator", "batch_count", "h_high", "h_low", "calibrated")
    # how adaptrain report shows end_epoch's columns (budgets in eps_unit, entropies in nats)
    telemetry = {
        "eps_share": Series("share of samples per budget ε ({eps_unit})"),
        "eps_epoch": Series("scheduled budget ε of the epoch ({eps_unit})", floor=1.0),
        "mean_eps": Series("mean budget ε ({eps_unit})", floor=1.0),
        "frac_up": Series("share of samples raised above the schedule", floor=0.05),
        "frac_down": Series("share of samples lowered below the schedule", floor=0.05),
        "frac_low_entropy": Series("share with entropy < h_low (raised)", floor=0.05),
        "frac_high_entropy": Series("share with entropy > h_high (lowered)", floor=0.05),
        "mean_entropy": Series("mean clean entropy (nats)", floor=0.2),
        "h_high": Series("upper entropy threshold h_high (nats)", floor=0.2),
        "h_low": Series("lower entropy threshold h_low (nats)", floor=0.2),
    }

    def __init__(
        self,
        ctx: RunContext,
        eps_min: int = 3,
        eps_max: int = 12,
        eps_unit: float = 1 / 255,
        schedule: Schedule = "cyclic",
        eps_fixed: int = 8,
        entropy: bool = True,
        thresholds: Literal["default", "calibrate"] = "default",
        h_high: float | None = None,
        h_low: float | None = None,
        calibrate_from: Annotated[str, PathOf("a trained run directory or checkpoint")] | None = None,
        draw: Literal["sample", "batch"] = "sample",
        n_large: int = 3,
        step_rule: Literal["ratio", "epoch"] = "ratio",
        step_ratio: float = 0.25,
        steps: int = 10,
    ) -> None:
        """Budgets ``eps_min``..``eps_max`` and ``eps_fixed`` are integers in ``eps_unit``
        (default 1/255); ``eps_fixed`` is used by ``schedule: fixed`` only. ``h_high`` /
        ``h_low`` (nats) default to the data set's values (see module docstring)."""
        super().__init__(ctx)
        require_in(eps_unit, "strategy.eps_unit", 0, 1, low_open=True)
        for name, value in (("eps_min", eps_min), ("eps_max", eps_max), ("eps_fixed", eps_fixed)):
            require_in(value, f"strategy.{name}", 0)
            require(value * eps_unit <= 1.0, f"strategy.{name}",
                    f"{value} x eps_unit {eps_unit:.5g} exceeds the [0, 1] image range")
        require(eps_max >= eps_min, "strategy.eps_max",
                f"must be >= eps_min ({eps_min}), got {eps_max}")
        require(eps_max - eps_min < MAX_BUDGETS, "strategy.eps_max", f"eps_min..eps_max spans "
                f"{eps_max - eps_min + 1} budgets; at most {MAX_BUDGETS} (one telemetry column each)")
        require(schedule != "fixed" or eps_min <= eps_fixed <= eps_max, "strategy.eps_fixed",
                f"must lie in [eps_min, eps_max] = [{eps_min}, {eps_max}], got {eps_fixed}")
        require_in(steps, "strategy.steps", 1, MAX_STEPS)
        require_in(step_ratio, "strategy.step_ratio", 0, MAX_MULTIPLE, low_open=True,
                   why="a multiple of each sample's eps")
        for name, value in (("h_high", h_high), ("h_low", h_low)):
            if value is not None:
                require_in(value, f"strategy.{name}", 0, MAX_ENTROPY, why="entropies in nats")
        self.budgets = budget_list(eps_min, eps_max)
        require(1 <= n_large <= len(self.budgets), "strategy.n_large",
                f"must be in [1, {len(self.budgets)}] (the number of budgets), got {n_large}")
        require(calibrate_from is None or thresholds == "calibrate", "strategy.calibrate_from",
                "is only used with strategy.thresholds=calibrate")
        self.eps_unit, self.schedule, self.eps_fixed = float(eps_unit), schedule, int(eps_fixed)
        self.use_entropy, self.draw, self.n_large = entropy, draw, n_large
        self.step_rule, self.step_ratio, self.steps = step_rule, float(step_ratio), steps
        self.calibrate_path = None
        if thresholds == "calibrate":
            require(h_high is None and h_low is None, "strategy.h_high" if h_high is not None
                    else "strategy.h_low", "is measured by thresholds=calibrate; leave it unset")
            require(calibrate_from is not None, "strategy.calibrate_from",
                    "thresholds=calibrate needs a trained run directory or checkpoint for h_low")
            if entropy:
                try:
                    self.calibrate_path = checkpoint.resolve(calibrate_from, "best")
                except CheckpointError as exc:
                    raise ConfigError("strategy.calibrate_from", exc.message) from None
            self.h_high, self.h_low = float("nan"), float("nan")
        else:
            hi, lo = default_thresholds(ctx.dataset, ctx.num_classes)
            self.h_high = float(hi if h_high is None else h_high)
            self.h_low = float(lo if h_low is None else h_low)
            # a default threshold of an unknown data set depends on its number of classes:
            # config validation (no data yet, num_classes 0) leaves that comparison to training
            known = ((h_high is not None and h_low is not None) or ctx.num_classes > 0
                     or ctx.dataset in DATASET_THRESHOLDS)
            require(not known or self.h_low <= self.h_high, "strategy.h_low",
                    f"must not exceed h_high ({self.h_high:.4g}), got {self.h_low:.4g}")
        self.calibrated = thresholds != "calibrate" or not entropy
        device = ctx.device
        self.budget_t = torch.tensor(self.budgets, dtype=torch.int64, device=device)
        self.large_t = self.budget_t[-n_large:].clone()
        self.generator = ctx.generator(Stream.ECAS)
        self.batch_count = 0
        self._reset_telemetry()

    # ------------------------------------------------------------------ schedule

    def scheduled(self, epoch: int) -> int:
        """The scheduled budget (in units) of the next batch of ``epoch``."""
        return scheduled_budget(self.schedule, self.budgets, epoch=epoch,
                                batch_count=self.batch_count, epochs=self.ctx.epochs,
                                fixed=self.eps_fixed)

    def assign(self, k: int, h: torch.Tensor, rows: Rows | None = None) -> torch.Tensor:
        """Algorithm 1: per-sample budgets (B,) int64 in units from the scheduled ``k`` and
        the clean entropies ``h`` (B,). Draws from the strategy's generator, per row of the
        global batch (``rows``: this shard's)."""
        B = h.shape[0]
        size = (B,) if self.draw == "sample" else (1,)
        pick = draw(partial(torch.randint, self.n_large), size,
                    ShardDraws(self.generator, rows or Rows.all(B)), device=self.generator.device)
        big = self.large_t[pick].expand(B)
        eps_k = torch.full((B,), k, dtype=torch.int64, device=h.device)
        eps_k = torch.where(h > self.h_high, self.budget_t[0], eps_k)
        return torch.where(h < self.h_low, big, eps_k)

    def plan(self, batch: Batch) -> AttackPlan:
        k = self.scheduled(batch.step.epoch)
        self.batch_count += 1
        B = batch.x.shape[0]
        h = None
        if self.use_entropy:
            logits = batch.clean_logits()
            if not self.calibrated:
                self._calibrate(batch, logits)
            h = entropy(logits)
            eps_k = self.assign(k, h, batch.rows)
        else:
            eps_k = torch.full((B,), k, dtype=torch.int64, device=batch.x.device)
        self._record(k, eps_k, h)
        eps = eps_k.to(torch.float32) * self.eps_unit
        if self.step_rule == "ratio":
            alpha: torch.Tensor | float = eps * self.step_ratio
        else:
            alpha = 2.0 * k * self.eps_unit / self.steps
        return AttackPlan(eps=eps, step_size=alpha, steps=self.steps)

    # ------------------------------------------------------------------ calibration

    def _calibrate(self, batch: Batch, logits: torch.Tensor) -> None:
        """h_high from the current (untrained) model's clean logits, h_low from a copy of the
        model carrying the trained checkpoint's weights; both on this batch. Runs once."""
        ref = copy.deepcopy(batch.model)
        checkpoint.load_into(ref, self.calibrate_path)
        with torch.no_grad(), frozen_model(ref, "eval"):
            ref_logits = ref(batch.x)
        del ref
        world, total = self.ctx.world, batch.rows.total  # means over the global batch
        h_high = float(world.mean(entropy(logits), total))
        h_low = float(world.mean(entropy(ref_logits), total))
        if not h_low < h_high:
            raise ConfigError("strategy.calibrate_from",
                              f"the checkpoint's mean clean entropy {h_low:.4f} is not below the "
                              f"untrained model's {h_high:.4f}; give a trained checkpoint")
        self.h_high, self.h_low, self.calibrated = h_high, h_low, True

    # ------------------------------------------------------------------ telemetry

    def _reset_telemetry(self) -> None:
        device = self.budget_t.device
        self._counts = torch.zeros(len(self.budgets), dtype=torch.int64, device=device)
        # up, down (vs the scheduled budget), low entropy, high entropy
        self._moves = torch.zeros(4, dtype=torch.int64, device=device)
        self._h_sum = torch.zeros((), dtype=torch.float32, device=device)
        self._n = 0
        self._sched_sum = 0

    def _record(self, k: int, eps_k: torch.Tensor, h: torch.Tensor | None) -> None:
        """Accumulate on the device; nothing is read back until :meth:`end_epoch`."""
        B = eps_k.shape[0]
        self._counts += (eps_k[:, None] == self.budget_t[None, :]).sum(dim=0)
        moves = [eps_k > k, eps_k < k]
        if h is not None:
            moves += [h < self.h_low, h > self.h_high]
            self._h_sum += h.sum()
        self._moves[: len(moves)] += torch.stack([m.sum() for m in moves])
        self._n += B
        self._sched_sum += k * B

    def start_epoch(self, epoch: int) -> None:
        self._reset_telemetry()

    def end_epoch(self, epoch: int) -> dict[str, float]:
        """``eps_share_<k>`` for every budget k of the list (units of eps_unit), ``eps_epoch``
        (scheduled budget; the epoch mean for cyclic-batch), ``mean_eps``, ``frac_up`` /
        ``frac_down`` (final budget above / below the scheduled one) and, with entropy on,
        ``frac_low_entropy`` / ``frac_high_entropy`` (rule fired), ``mean_entropy``,
        ``h_high``, ``h_low``."""
        totals = torch.tensor([self._n, self._sched_sum], dtype=torch.float64,
                              device=self._counts.device)
        self.ctx.world.sum_(self._counts, self._moves, self._h_sum, totals)  # over the ranks
        n, self._sched_sum = int(totals[0]), int(totals[1])
        if n == 0:
            return {}
        counts = self._counts.tolist()
        up, down, low, high = self._moves.tolist()
        out: dict[str, Any] = {f"eps_share_{b}": c / n for b, c in zip(self.budgets, counts, strict=True)}
        out["eps_epoch"] = self._sched_sum / n
        out["mean_eps"] = sum(b * c for b, c in zip(self.budgets, counts, strict=True)) / n
        out["frac_up"], out["frac_down"] = up / n, down / n
        if self.use_entropy:
            out["frac_low_entropy"], out["frac_high_entropy"] = low / n, high / n
            out["mean_entropy"] = float(self._h_sum) / n
            out["h_high"], out["h_low"] = self.h_high, self.h_low
        return out

    def summary(self, telemetry: dict[str, float], eps_text: Callable[[float], str]) -> str:
        """Mean budget and the shares moved above / below the scheduled one."""
        if "mean_eps" not in telemetry:
            return ""
        return (f"eps {eps_text(telemetry['mean_eps'] * self.eps_unit)} "
                f"up {pct(telemetry['frac_up'])} down {pct(telemetry['frac_down'])}")
