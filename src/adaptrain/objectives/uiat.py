"""(U)IAT — inverse adversarial training (Dong et al., CVPR 2023, Eqs. 3-8, Algorithm 1).

Training loss per sample (Eq. 7): CE(f(x_adv), y) + lam * KL(p || f(x_adv)), where the target
p is a constant (no gradient) from inverse adversarial examples x_inv
(:mod:`adaptrain.attacks.inverse`), instance-wise (IAT) or class-universal (UIAT). Momentum
(Eq. 8): p = f(x_inv) before epoch T, then gamma * p_prev + (1 - gamma) * f(x_inv) per sample
(by the loader's idx). One-off: p = f(x) before T', p = f(x_inv) stored at T', reused after.
Every inverse-side pass runs in BatchNorm mode ``target_bn`` (default ``batch``: the batch's
own statistics, running statistics left unchanged; ``eval``: running statistics).
x_adv comes from the run's attack and is only read.
Shapes: x (B, C, H, W) in [0, 1], y (B,); loss (B,); state z (num_classes, C, H, W),
p (num_train, num_classes), p_valid (num_train,). eps', alpha' in [0, 1] image units.
Decisions, costs and state: docs/uiat.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..attacks.engine import frozen_model
from ..attacks.inverse import (
    FeatureDistance,
    InverseResult,
    instance_inverse,
    inverse_loss,
    universal_inverse,
)
from ..attacks.plan import AttackPlan
from ..component import MAX_EPOCHS, MAX_STEPS, MAX_WEIGHT, Series, require, require_in
from ..context import Batch, Cached, CacheKey, RunContext, Stream
from .base import OBJECTIVES, Objective

Z_INIT_SCALE = 0.001  # Algorithm 1: z_c ~ 0.001 * N(0, 1)


def kl_from_target(p: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """KL(p || softmax(logits)) per sample: (B, C), (B, C) -> (B,); p is a probability target."""
    logq = F.log_softmax(logits.float(), dim=1)
    return (torch.xlogy(p, p) - p * logq).sum(dim=1)


@dataclass
class _Targets:
    """One batch's inverse targets, computed once and committed at most once."""

    x_adv: torch.Tensor  # the x_adv they were computed for (identity check)
    p: torch.Tensor  # (B, C) KL target
    store: bool  # write p into the per-sample buffer on commit
    inverse: InverseResult | None = None  # None when no inverse pass ran
    committed: bool = False


@OBJECTIVES.register("uiat")
class UIAT(Objective):
    """(U)IAT: CE(f(x_adv)) + lam * KL(p || f(x_adv)), p from inverse adversaries (Eq. 7)."""

    attack_loss = "ce"
    CACHE_KEY = CacheKey(Cached.UIAT_TARGETS)
    # how adaptrain report shows end_epoch's columns (KL and CE in nats; z in [0, 1] units)
    telemetry = {
        "uiat_kl": Series("KL(target || f(x_adv)) (nats)", floor=0.1),
        "uiat_target_p_true": Series("target's probability of the true class", floor=0.05),
        "uiat_frac_batches_inverse": Series("share of batches with inverse targets", floor=0.05),
        "uiat_ce_inv": Series("CE on inverse adversaries (nats)", floor=0.1),
        "uiat_acc_inv": Series("accuracy on inverse adversaries", floor=0.05),
        "uiat_ce_clean": Series("CE on clean images (nats)", floor=0.1),
        "uiat_acc_clean": Series("accuracy on clean images", floor=0.05),
        "uiat_z_linf_mean": Series("class perturbation ‖z_c‖∞, mean over classes"),
        "uiat_z_linf_max": Series("class perturbation ‖z_c‖∞, largest"),
        "uiat_z_frac_at_eps": Series("share of z's values at the bound eps_inv", floor=0.05),
    }

    def __init__(self, ctx: RunContext, inverse: Literal["instance", "universal"] = "universal",
                 lam: float | None = None, beta: float = 1.0, eps_inv: float = 4 / 255,
                 alpha_inv: float = 1 / 255, inverse_steps: int = 5, momentum: float = 0.9,
                 momentum_start: int | None = None, one_off: bool = False,
                 one_off_epoch: int | None = None,
                 feature_distance: FeatureDistance = "sum",
                 target_bn: Literal["eval", "batch"] = "batch") -> None:
        """lam: None picks the paper's 3.0 for SVHN, else 3.5. target_bn: BatchNorm mode of
        every inverse-side pass (F(x), F(x_adv), the inverse step, f(x_inv) and the one-off
        clean target f(x)): ``eval`` uses the running statistics, ``batch`` the batch's own
        (as the train-mode forward on x_adv does; running statistics are left unchanged;
        dropout stays off either way).
        momentum_start (T): None is 10% of the epochs. one_off_epoch (T'): None is the epoch
        before the first lr decay (``ctx.first_decay_epoch - 1``; the middle epoch if the
        schedule never decays). inverse_steps: instance-wise only. T, T', alpha' and
        inverse_steps are not in the paper.
        """
        super().__init__(ctx)
        if lam is None:
            lam = 3.0 if ctx.dataset.lower() == "svhn" else 3.5
        require_in(lam, "objective.lam", 0, MAX_WEIGHT, why="a loss weight")
        require_in(beta, "objective.beta", 0, MAX_WEIGHT, why="a loss weight")
        require_in(eps_inv, "objective.eps_inv", 0, 1, why="an L-inf budget in [0, 1] image units")
        require_in(alpha_inv, "objective.alpha_inv", 0, 1, low_open=True,
                   why="an L-inf step in [0, 1] image units")
        require_in(inverse_steps, "objective.inverse_steps", 1, MAX_STEPS)
        require(0 <= momentum < 1, "objective.momentum", f"must be in [0, 1), got {momentum}")
        if momentum_start is None:
            momentum_start = ctx.epochs // 10
        require(0 <= momentum_start <= MAX_EPOCHS, "objective.momentum_start",
                f"must be >= 0 (a 0-based epoch), got {momentum_start}")
        if one_off_epoch is None:
            decay = ctx.first_decay_epoch
            one_off_epoch = max(0, (decay if decay is not None else math.ceil(ctx.epochs / 2)) - 1)
        require(0 <= one_off_epoch <= MAX_EPOCHS, "objective.one_off_epoch",
                f"must be >= 0 (a 0-based epoch), got {one_off_epoch}")
        self.inverse, self.lam, self.beta = inverse, float(lam), float(beta)
        self.eps_inv, self.alpha_inv, self.inverse_steps = eps_inv, alpha_inv, inverse_steps
        self.momentum, self.momentum_start = momentum, momentum_start
        self.one_off, self.one_off_epoch = one_off, one_off_epoch
        self.feature_distance = feature_distance
        require(target_bn in ("eval", "batch"), "objective.target_bn",
                f"must be 'eval' or 'batch', got {target_bn!r}")
        self.target_bn = target_bn

        device = ctx.device
        self.p = torch.zeros(ctx.num_train, ctx.num_classes, device=device)
        self.p_valid = torch.zeros(ctx.num_train, dtype=torch.bool, device=device)
        keys = ["p", "p_valid"]
        if inverse == "universal":
            g = ctx.generator(Stream.UIAT_INIT)
            self.z = Z_INIT_SCALE * torch.randn((ctx.num_classes, *ctx.input_shape), generator=g,
                                                device=device)
            keys.append("z")
        self.state_keys = tuple(keys)
        self.epoch = 0
        self._stored_complete = False
        self._reset_telemetry()

    # ---------------------------------------------------------------------------- schedule

    def start_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if self.one_off and epoch > self.one_off_epoch:
            self._stored_complete = bool(self.p_valid.all())  # one host sync per epoch
        self._reset_telemetry()

    def phase(self) -> str:
        """``clean`` (p = f(x)), ``inverse`` (compute inverse examples) or ``stored`` (reuse p)."""
        if not self.one_off:
            return "inverse"
        if self.epoch < self.one_off_epoch:
            return "clean"
        return "inverse" if self.epoch == self.one_off_epoch else "stored"

    def uses_momentum(self) -> bool:
        return not self.one_off and self.epoch >= self.momentum_start

    # ---------------------------------------------------------------------------- targets

    def _clean_target(self, batch: Batch) -> torch.Tensor:
        return F.softmax(batch.clean_logits(self.target_bn), dim=1)

    def _inverse_examples(self, batch: Batch, x_adv: torch.Tensor) -> InverseResult:
        model, x, y = batch.model, batch.x, batch.y
        if self.beta > 0:
            feats_clean = batch.clean_features(self.target_bn)
            with torch.no_grad(), frozen_model(model, self.target_bn):
                feats_adv = model.features(x_adv).float()
            loss_fn = inverse_loss(self.beta, feats_clean, feats_adv, self.feature_distance)
        else:
            loss_fn = inverse_loss(0.0)
        if self.inverse == "universal":
            return universal_inverse(model, x, y, self.z, loss_fn=loss_fn, eps=self.eps_inv,
                                     step_size=self.alpha_inv, bn=self.target_bn,
                                     sum_=self.ctx.world.sum_ if self.ctx.world.many else None)
        return instance_inverse(model, x, y, loss_fn=loss_fn, eps=self.eps_inv,
                                step_size=self.alpha_inv, steps=self.inverse_steps,
                                bn=self.target_bn)

    def targets(self, batch: Batch, x_adv: torch.Tensor) -> _Targets:
        """This batch's KL targets (computed on first use, then cached in ``batch.cache``)."""
        cached = batch.cache.get(self.CACHE_KEY)
        if isinstance(cached, _Targets) and cached.x_adv is x_adv:
            return cached
        phase = self.phase()
        if phase == "clean":
            t = _Targets(x_adv, self._clean_target(batch), store=False)
        elif phase == "stored":
            p = self.p[batch.idx]
            if not self._stored_complete:  # samples never seen at T' fall back to f(x)
                p = torch.where(self.p_valid[batch.idx, None], p, self._clean_target(batch))
            t = _Targets(x_adv, p, store=False)
        else:
            inv = self._inverse_examples(batch, x_adv)
            q = F.softmax(inv.logits, dim=1)
            if self.uses_momentum():
                prev = self.p[batch.idx]
                mixed = self.momentum * prev + (1.0 - self.momentum) * q
                q = torch.where(self.p_valid[batch.idx, None], mixed, q)
            t = _Targets(x_adv, q, store=True, inverse=inv)
        batch.cache[self.CACHE_KEY] = t
        return t

    # ---------------------------------------------------------------------------- loss

    def loss(self, model: nn.Module, batch: Batch, x_adv: torch.Tensor, plan: AttackPlan, *,
             commit: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.lam == 0:  # plain PGD-AT: no inverse passes
            logits_adv = model(x_adv)
            return F.cross_entropy(logits_adv.float(), batch.y, reduction="none"), logits_adv
        t = self.targets(batch, x_adv)  # before the train-mode forward moves the BN statistics
        logits_adv = model(x_adv)
        ce = F.cross_entropy(logits_adv.float(), batch.y, reduction="none")
        kl = kl_from_target(t.p, logits_adv)
        if commit and not t.committed:
            self._commit(batch, t, kl.detach())
        return ce + self.lam * kl, logits_adv

    @torch.no_grad()
    def _commit(self, batch: Batch, t: _Targets, kl: torch.Tensor) -> None:
        if t.store:
            # every rank stores the whole global batch's targets: a sample's memory is right
            # whichever rank holds it next epoch
            idx, p = self.ctx.world.gather_batch(batch.rows.total, batch.idx, t.p)
            self.p[idx] = p
            self.p_valid[idx] = True
        if t.inverse is not None and t.inverse.z is not None:
            self.z.copy_(t.inverse.z)
        t.committed = True
        self._record(batch, t, kl)

    # ---------------------------------------------------------------------------- telemetry

    def _reset_telemetry(self) -> None:
        # device-side sums, read once per epoch: [samples, kl, p_y, inverse batches, batches,
        # inverse samples, inverse CE, inverse correct, clean samples, clean CE, clean correct]
        self._sums = torch.zeros(11, device=self.ctx.device)

    def _record(self, batch: Batch, t: _Targets, kl: torch.Tensor) -> None:
        y, s = batch.y, self._sums
        n = float(y.shape[0])
        s[0] += n
        s[1] += kl.sum()
        s[2] += t.p.gather(1, y[:, None]).sum()
        s[4] += 1
        if t.inverse is not None:
            s[3] += 1
            s[5] += n
            s[6] += F.cross_entropy(t.inverse.logits, y, reduction="sum")
            s[7] += (t.inverse.logits.argmax(1) == y).sum()
        # only when some component paid for it; in the targets' BatchNorm mode
        clean = batch.cache.get(CacheKey(Cached.CLEAN_LOGITS, self.target_bn))
        if clean is not None:
            s[8] += n
            s[9] += F.cross_entropy(clean, y, reduction="sum")
            s[10] += (clean.argmax(1) == y).sum()

    def end_epoch(self, epoch: int) -> dict[str, float]:
        self.ctx.world.sum_(self._sums)  # over the ranks (batch counts too: only ratios use them)
        s = self._sums.tolist()
        out: dict[str, float] = {}
        if s[0] > 0:
            out["uiat_kl"] = s[1] / s[0]
            out["uiat_target_p_true"] = s[2] / s[0]
            out["uiat_frac_batches_inverse"] = s[3] / s[4]
        if s[5] > 0:
            out["uiat_ce_inv"] = s[6] / s[5]
            out["uiat_acc_inv"] = s[7] / s[5]
        if s[8] > 0:
            out["uiat_ce_clean"] = s[9] / s[8]
            out["uiat_acc_clean"] = s[10] / s[8]
        if self.inverse == "universal":
            z_inf = self.z.flatten(1).abs().amax(dim=1)
            out["uiat_z_linf_mean"] = float(z_inf.mean())
            out["uiat_z_linf_max"] = float(z_inf.max())
            out["uiat_z_frac_at_eps"] = float((self.z.abs() >= self.eps_inv * (1 - 1e-6)).float().mean())
        return out
