"""LAS-AT: a learnable attack strategy (Jia et al., CVPR 2022, Eqs. 4-13 and Algorithm 1).

A policy network looks at each clean image and picks that sample's attack: budget eps, step
size and number of PGD iterations (and, for TRADES, the weight beta of its KL term). The
target is trained every batch on the examples those strategies produce; once every ``k``
batches the policy takes one REINFORCE step (Eq. 12-13) on the reward of Eq. (7),

    R_i = L1_i + alpha * L2_i + beta * L3_i            (alpha = 2, beta = 4)
    L1_i = target's training loss on x_adv_i           (the objective's per-sample loss)
    L2_i = -CE(f(x_eval_i; w_hat), y_i)                (x_eval: PGD-10, 8/255, step 2/255, on w_hat)
    L3_i = -CE(f(x_i; w_hat), y_i)
    w_hat = w - lr * grad_w L1                         (one SGD step at the current lr)

Threat model: L-inf (or the attack's norm), per-sample ||delta_i|| <= eps_i, x + delta in [0, 1].
Option lists are integers in units of ``unit`` (1/255 by default); eps, step in [0, 1] units in
the returned AttackPlan: eps (B,), step_size (B,), steps (B,) int64, beta (B,)
(with a beta head, else None).

Cost, the look-ahead without a model copy, and decisions: docs/las.md.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from ..attacks.engine import frozen_model
from ..attacks.pgd import pgd
from ..attacks.plan import AttackPlan
from ..component import MAX_BATCH, MAX_LR, MAX_RESTARTS, MAX_STEPS, MAX_WEIGHT, Series, require, require_in
from ..context import Batch, Feedback, RunContext, Stream
from ..errors import ConfigError
from ..models import MODELS
from ..precision import use_amp
from ..threat import Rows, ShardDraws
from .base import STRATEGIES, Strategy
from .las_policy import DEFAULT_BACKBONE, build_policy, log_prob_and_entropy, reinforce_loss, sample

TERMS = ("l1", "l2", "l3")
MAX_K = 100_000  # batches between policy updates
MAX_CLIP = 1e6  # policy gradient-norm clip (0: off)


class _Updated(nn.Module):
    """``model`` evaluated with replacement parameters (the look-ahead w_hat) and its own buffers."""

    def __init__(self, model: nn.Module, params: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.model = model
        self.params = params

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.model, self.params, (x,))


def check_backbone(backbone: dict[str, Any] | None) -> None:
    """The policy's backbone is a ``model:`` section: its name, fields and ranges, reported as
    ``strategy.backbone.<field>`` (the same spec :func:`build_policy` completes)."""
    spec = dict(backbone or DEFAULT_BACKBONE)
    if "name" not in spec:
        spec = {**DEFAULT_BACKBONE, **spec}
    try:
        entry = MODELS.get(spec.pop("name"))
        entry.probe(entry.check(spec, "model"))
    except ConfigError as exc:
        raise ConfigError("strategy.backbone" + exc.field.removeprefix("model"), exc.message) from None


def check_las(fields: dict[str, Any]) -> None:
    """Config validation's check: :meth:`LAS._check` without building the policy network
    (its backbone may be a ResNet-18)."""
    LAS._check(fields)


@STRATEGIES.register("las", validator=check_las, budget_unit="unit",
                     budgets=("eps_options", "step_options", "reward_eps", "reward_step"))
class LAS(Strategy):
    """LAS-AT (Jia et al. 2022): per-sample eps / step / iterations (/ TRADES beta) from a policy
    network trained by REINFORCE on the look-ahead reward L1 + 2 L2 + 4 L3."""

    def __init__(
        self,
        ctx: RunContext,
        eps_options: tuple[float, ...] = tuple(range(3, 16)),
        step_options: tuple[float, ...] = tuple(range(1, 7)),
        iters_options: tuple[int, ...] = tuple(range(3, 16)),
        beta_options: tuple[float, ...] = (),
        unit: float = 1 / 255,
        backbone: dict[str, Any] | None = None,
        k: int = 20,
        policy_lr: float = 1e-3,
        policy_momentum: float = 0.9,
        policy_weight_decay: float = 0.0,
        reward: Literal["loss", "accuracy"] = "loss",
        reward_terms: tuple[str, ...] = TERMS,
        reward_alpha: float | None = None,
        reward_beta: float | None = None,
        reward_scope: Literal["sample", "batch"] = "sample",
        reward_subset: int = 0,
        reward_eps: float = 8,
        reward_step: float = 2,
        reward_steps: int = 10,
        reward_restarts: int = 1,
        reward_model: Literal["updated", "current"] = "updated",
        lookahead: Literal["sgd", "optimizer"] = "sgd",
        baseline: Literal["moving", "none"] = "moving",
        baseline_momentum: float = 0.9,
        entropy_coef: float = 0.0,
        clip_grad: float = 1.0,
        amp: Literal["auto", "bf16", "off"] = "auto",
    ) -> None:
        """Option lists (eps, step: numbers; iters: integers) are in units of ``unit``
        (1/255); an empty ``beta_options`` means no beta head (PGD-AT / AWP variants).

        k: the policy is updated on every k-th batch. reward: ``loss`` (Eq. 7) or ``accuracy``
        (the authors' code: L2 and L3 become robust / clean accuracy of w_hat, weights 4 / 2).
        reward_terms: the Table 6 ablation (any of l1, l2, l3). reward_alpha / reward_beta:
        weights of L2 / L3 (default 2 / 4 for ``loss``, 4 / 2 for ``accuracy``).
        reward_scope: ``sample`` (Eq. 12, per-sample terms) or ``batch`` (every sample gets
        the batch means, as the authors' code). reward_subset: evaluate L2 / L3 and update
        the policy on only the first n samples of the batch (0: all). reward_eps /
        reward_step / reward_steps / reward_restarts: the evaluation attack a_hat (in
        ``unit``). reward_model: the evaluation attack runs on ``updated`` weights w_hat (the
        paper's x_adv^a_hat = g(x, a_hat, w_hat)) or on the ``current`` weights.
        lookahead: ``sgd`` (w - lr * g, Eq. 5) or ``optimizer`` (the step the real optimiser
        will take: momentum, Nesterov, weight decay). baseline: moving average of the mean
        reward (momentum ``baseline_momentum``) or none. clip_grad: policy gradient norm
        clip (0: off). amp: bf16 autocast for the policy and reward passes (auto: where bf16
        is native, :mod:`adaptrain.precision`).
        """
        self._check(dict(locals()))
        super().__init__(ctx)
        self.options: dict[str, tuple[float, ...]] = {
            "eps": tuple(eps_options), "step": tuple(step_options),
            "iters": tuple(int(v) for v in iters_options)}
        if beta_options:
            self.options["beta"] = tuple(beta_options)
        dev = ctx.device
        self.values = {  # what each option index means, on the device
            "eps": torch.tensor(self.options["eps"], dtype=torch.float32, device=dev) * unit,
            "step": torch.tensor(self.options["step"], dtype=torch.float32, device=dev) * unit,
            "iters": torch.tensor(self.options["iters"], dtype=torch.int64, device=dev)}
        if beta_options:
            self.values["beta"] = torch.tensor(self.options["beta"], dtype=torch.float32, device=dev)
        self.unit, self.k = unit, k
        self.reward, self.reward_terms = reward, tuple(reward_terms)
        accuracy = reward == "accuracy"
        self.weights = {"l1": 1.0,
                        "l2": reward_alpha if reward_alpha is not None else (4.0 if accuracy else 2.0),
                        "l3": reward_beta if reward_beta is not None else (2.0 if accuracy else 4.0)}
        self.reward_scope, self.reward_subset = reward_scope, reward_subset
        self.reward_attack = (reward_eps * unit, reward_step * unit, reward_steps, reward_restarts)
        self.reward_model, self.lookahead = reward_model, lookahead
        self.use_baseline, self.baseline_momentum = baseline == "moving", baseline_momentum
        self.entropy_coef, self.clip_grad = entropy_coef, clip_grad
        self.amp = amp

        # the policy's initial weights come from the run seed without touching the global RNG
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(ctx.seed_of(Stream.LAS_INIT))
            heads = {name: len(opts) for name, opts in self.options.items()}
            self.policy = build_policy(backbone, ctx.input_shape, heads).to(dev)
        self.optimizer = torch.optim.SGD(self.policy.parameters(), lr=policy_lr,
                                         momentum=policy_momentum, weight_decay=policy_weight_decay)
        self.generator = ctx.generator(Stream.LAS_SAMPLE)
        self.attack_generator = ctx.generator(Stream.LAS_REWARD_ATTACK)
        self.baseline = torch.zeros((), device=dev)
        self.baseline_ready = False
        self.t = 0  # target steps seen (plan + observe pairs)
        self.last_actions: dict[str, torch.Tensor] = {}  # the last plan's option indices, (B,) per head
        self._pending: tuple[torch.Tensor, torch.Tensor] | None = None
        self.start_epoch(0)

    state_keys = ("policy", "optimizer", "generator", "attack_generator", "baseline",
                  "baseline_ready", "t")
    # how adaptrain report shows end_epoch's columns (options in ``unit``, rewards in nats)
    telemetry = {
        "eps_share": Series("share of samples per chosen budget ε ({unit})"),
        "step_share": Series("share of samples per chosen step size ({unit})"),
        "iters_share": Series("share of samples per chosen number of iterations"),
        "beta_share": Series("share of samples per chosen TRADES beta"),
        "mean_eps": Series("mean chosen budget ε ({unit})", floor=1.0),
        "mean_iters": Series("mean chosen iterations", floor=1.0),
        "reward": Series("policy reward R (mean)", floor=0.2),
        "reward_l1": Series("reward term L1: target loss on x_adv", floor=0.2),
        "reward_l2": Series("reward term L2: -CE of the look-ahead model under PGD", floor=0.2),
        "reward_l3": Series("reward term L3: -CE of the look-ahead model, clean", floor=0.2),
        "baseline": Series("reward baseline (moving average)", floor=0.2),
        "entropy": Series("policy entropy (nats, summed over heads)", floor=0.2),
    }

    @staticmethod
    def _check(f: dict[str, Any]) -> None:
        """Range checks on the constructor's fields ``f``; one-line errors naming the field.
        Budgets are bounded by config validation under the attack's norm (``budgets``)."""
        for name, low, high in (("eps_options", 0, None), ("step_options", 0, None),
                                ("iters_options", 1, MAX_STEPS), ("beta_options", 0, MAX_WEIGHT)):
            opts, field = f[name], f"strategy.{name}"
            require(name == "beta_options" or len(opts) >= 1, field, "needs at least one option")
            require(all(v >= low for v in opts), field, f"every option must be >= {low}, got {list(opts)}")
            require(high is None or all(v <= high for v in opts), field,
                    f"every option must be <= {high}, got {list(opts)}")
            require(len(set(opts)) == len(opts), field, f"options must be distinct, got {list(opts)}")
        for name, low, high, open_low, open_high in (
            ("unit", 0, 1, True, False), ("k", 1, MAX_K, False, False),
            ("policy_lr", 0, MAX_LR, True, False), ("policy_momentum", 0, 1, False, True),
            ("policy_weight_decay", 0, 1, False, False), ("reward_subset", 0, MAX_BATCH, False, False),
            ("reward_eps", 0, None, False, False), ("reward_step", 0, None, False, False),
            ("reward_steps", 1, MAX_STEPS, False, False),
            ("reward_restarts", 1, MAX_RESTARTS, False, False),
            ("reward_alpha", 0, MAX_WEIGHT, False, False), ("reward_beta", 0, MAX_WEIGHT, False, False),
            ("baseline_momentum", 0, 1, False, True), ("entropy_coef", 0, MAX_WEIGHT, False, False),
            ("clip_grad", 0, MAX_CLIP, False, False),
        ):
            if f[name] is not None:
                require_in(f[name], f"strategy.{name}", low, high, low_open=open_low, high_open=open_high)
        terms = f["reward_terms"]
        require(len(terms) >= 1 and set(terms) <= set(TERMS) and len(set(terms)) == len(terms),
                "strategy.reward_terms", f"must be distinct entries of {', '.join(TERMS)}, got {list(terms)}")
        check_backbone(f["backbone"])

    # ----------------------------------------------------------------------------- acting

    def update_due(self) -> bool:
        """Whether the coming batch is the k-th, whose reward updates the policy."""
        return (self.t + 1) % self.k == 0

    def plan(self, batch: Batch) -> AttackPlan:
        update = self.update_due()
        # batch statistics in the policy's BatchNorm on every batch, so the distribution the
        # actions are drawn from is the one the update differentiates
        self.policy.train()
        with torch.set_grad_enabled(update), self._autocast():
            logits = self.policy(batch.x.float())
        actions = {name: sample(z, batch.draws(self.generator)) for name, z in logits.items()}
        with torch.set_grad_enabled(update):
            logp, ent = log_prob_and_entropy(logits, actions)
        self._pending = (logp, ent) if update else None
        self._record_actions(actions, ent.detach())
        self.last_actions = actions
        v = self.values
        return AttackPlan(eps=v["eps"][actions["eps"]], step_size=v["step"][actions["step"]],
                          steps=v["iters"][actions["iters"]],
                          beta=v["beta"][actions["beta"]] if "beta" in actions else None)

    # ----------------------------------------------------------------------------- learning

    def observe(self, fb: Feedback) -> None:
        pending, self._pending = self._pending, None
        self.t += 1
        if pending is None:
            return
        terms = self.reward_terms_of(fb)
        total = self.reward_rows(fb.batch).total
        reward = self.combine(terms, total)
        n = reward.shape[0]
        logp, ent = pending
        self.update_policy(logp[:n], ent[:n], reward, total)
        self._record_reward(terms, reward, total)

    def reward_rows(self, batch: Batch) -> Rows:
        """This rank's rows of the rewarded ones: the first ``reward_subset`` rows of the global
        batch (all if 0)."""
        rows = batch.rows
        total = rows.total if not self.reward_subset else min(self.reward_subset, rows.total)
        return Rows(min(rows.start, total), min(rows.stop, total), total)

    def combine(self, terms: dict[str, torch.Tensor], total: int | None = None) -> torch.Tensor:
        """Eq. (7) from the per-sample terms: sum of the enabled terms times their weights
        (``total``: the rewarded rows of the global batch, when these are one rank's)."""
        reward = None
        world = self.ctx.world
        for name in self.reward_terms:
            term = terms[name]
            if self.reward_scope == "batch":
                term = world.mean(term, total or term.shape[0]).expand_as(term)
            part = self.weights[name] * term
            reward = part if reward is None else reward + part
        assert reward is not None
        return reward

    def update_policy(self, logp: torch.Tensor, ent: torch.Tensor, reward: torch.Tensor,
                      total: int | None = None) -> None:
        """One REINFORCE step (Eq. 12-13) with the moving-average baseline, clipped gradient;
        under torchrun on the policy gradient of the global batch (``total`` rewarded rows)."""
        world = self.ctx.world
        base = self.baseline if (self.use_baseline and self.baseline_ready) else 0.0
        loss = reinforce_loss(logp, reward, base, ent, self.entropy_coef,
                              total=total if world.many else None)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        world.sum_grads_(self.policy.parameters())  # the ranks' shares of the global mean
        if self.clip_grad > 0:
            nn.utils.clip_grad_norm_(self.policy.parameters(), self.clip_grad)
        self.optimizer.step()
        # the baseline learns from this batch only after it was used, so it never depends on
        # the actions it is subtracted from
        mean = world.mean(reward.detach(), total or reward.shape[0]).to(self.baseline.dtype)
        if self.baseline_ready:
            self.baseline.mul_(self.baseline_momentum).add_((1 - self.baseline_momentum) * mean)
        else:
            self.baseline.copy_(mean)
            self.baseline_ready = True

    @torch.no_grad()
    def reward_terms_of(self, fb: Feedback) -> dict[str, torch.Tensor]:
        """Per-sample L1, L2, L3 (n,) on the first n = reward_subset rows (all if 0).

        Only the enabled terms are computed; L2 / L3 need the look-ahead w_hat, L2 also the
        evaluation attack. With ``reward: accuracy`` L2 / L3 are 0/1 correctness of w_hat.
        """
        batch = fb.batch
        rows = self.reward_rows(batch)
        n = rows.stop - rows.start
        x, y = batch.x[:n], batch.y[:n]
        out = {"l1": fb.loss[:n].float()}
        need = set(self.reward_terms)
        if not need & {"l2", "l3"}:
            return out
        updated = _Updated(batch.model, self.lookahead_params(fb))
        accuracy = self.reward == "accuracy"
        if "l2" in need:
            eps, step, steps, restarts = self.reward_attack
            victim = updated if self.reward_model == "updated" else batch.model
            plan = AttackPlan(eps=eps, step_size=step, steps=steps, norm=fb.attack.norm,
                              random_start="uniform", bn="eval", restarts=restarts)
            with torch.enable_grad(), self._autocast():
                res = pgd(victim, x, y, plan, generator=ShardDraws(self.attack_generator, rows),
                          final_eval=True)
            if self.reward_model == "updated":
                ce, wrong = res.loss, res.info["misclassified"]
            else:
                logits = self._eval_logits(updated, res.x_adv)
                ce = F.cross_entropy(logits, y, reduction="none")
                wrong = logits.argmax(dim=1) != y
            out["l2"] = (~wrong).float() if accuracy else -ce
        if "l3" in need:
            logits = self._eval_logits(updated, x)
            out["l3"] = ((logits.argmax(dim=1) == y).float() if accuracy
                         else -F.cross_entropy(logits, y, reduction="none"))
        return out

    @torch.no_grad()
    def lookahead_params(self, fb: Feedback) -> dict[str, torch.Tensor]:
        """w_hat by parameter name: the weights after one step on this batch's gradient.

        New tensors; the model's parameters, gradients and the optimiser state are only read.
        ``sgd``: w - lr * g. ``optimizer``: the update torch.optim.SGD is about to apply
        (weight decay, momentum buffer, dampening, Nesterov). Parameters without a gradient
        keep their value. AWP's perturbation v is taken off (:meth:`AWP.offsets`).
        """
        model, opt = fb.batch.model, fb.optimizer
        group_of = {id(p): g for g in opt.param_groups for p in g["params"]}
        offsets = fb.awp.offsets() if fb.awp is not None else {}
        out: dict[str, torch.Tensor] = {}
        for name, p in model.named_parameters():
            w = p.detach()
            g = p.grad
            group = group_of.get(id(p))
            if g is not None:
                lr = group["lr"] if group is not None else fb.batch.step.lr
                d = g if self.lookahead == "sgd" or group is None else self._sgd_direction(
                    p, g, group, opt.state.get(p, {}))
                w = w - lr * d
            v = offsets.get(id(p))
            if v is not None:
                w = w - v
            out[name] = w
        return out

    @staticmethod
    def _sgd_direction(p: torch.Tensor, g: torch.Tensor, group: dict[str, Any],
                       state: dict[str, Any]) -> torch.Tensor:
        """The direction torch.optim.SGD steps along for ``p`` (without changing its state)."""
        d = g
        if group.get("weight_decay", 0.0):
            d = d + group["weight_decay"] * p.detach()
        momentum = group.get("momentum", 0.0)
        if momentum:
            buf = state.get("momentum_buffer")
            buf = d if buf is None else momentum * buf + (1 - group.get("dampening", 0.0)) * d
            d = d + momentum * buf if group.get("nesterov", False) else buf
        return d

    # ----------------------------------------------------------------------------- helpers

    def _autocast(self):
        on = use_amp(self.amp, self.ctx.device)
        return torch.autocast(self.ctx.device.type, dtype=torch.bfloat16) if on else nullcontext()

    def _eval_logits(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), frozen_model(model, "eval"), self._autocast():
            return model(x).float()

    # ----------------------------------------------------------------------------- telemetry

    def start_epoch(self, epoch: int) -> None:
        dev = self.ctx.device
        self._counts = {name: torch.zeros(len(opts), dtype=torch.int64, device=dev)
                        for name, opts in self.options.items()}
        self._entropy_sum = torch.zeros((), dtype=torch.float64, device=dev)
        self._seen = 0
        self._reward_sum = torch.zeros(len(TERMS) + 1, dtype=torch.float64, device=dev)
        self._reward_seen = torch.zeros(len(TERMS) + 1, dtype=torch.float64, device=dev)

    def _record_actions(self, actions: dict[str, torch.Tensor], ent: torch.Tensor) -> None:
        for name, a in actions.items():
            self._counts[name] += torch.bincount(a, minlength=len(self.options[name]))
        self._entropy_sum += ent.double().sum()
        self._seen += int(ent.shape[0])

    def _record_reward(self, terms: dict[str, torch.Tensor], reward: torch.Tensor,
                       total: int | None = None) -> None:
        world = self.ctx.world
        for i, name in enumerate(TERMS):
            if name in terms:
                self._reward_sum[i] += world.mean(terms[name].double(), total or reward.shape[0])
                self._reward_seen[i] += 1
        self._reward_sum[-1] += world.mean(reward.double(), total or reward.shape[0])
        self._reward_seen[-1] += 1

    def end_epoch(self, epoch: int) -> dict[str, float]:
        """Shares of every option (``eps_share_8`` ...; stable columns), mean sampled eps and
        iterations (option units), mean reward terms of the epoch's policy updates (NaN when a
        term is off or no update happened), the baseline and the mean policy entropy (nats,
        summed over heads). Few line columns, so that ``adaptrain report``'s panels hold
        them all."""
        seen = torch.tensor(float(self._seen), dtype=torch.float64, device=self._entropy_sum.device)
        self.ctx.world.sum_(*self._counts.values(), self._entropy_sum, seen)  # over the ranks
        self._seen = int(seen)
        out: dict[str, float] = {}
        for name, opts in self.options.items():
            counts = self._counts[name].double().cpu()
            total = float(counts.sum())
            for value, c in zip(opts, counts.tolist(), strict=True):
                out[f"{name}_share_{value:g}"] = c / total if total else math.nan
            if name in ("eps", "iters"):  # the budget and the cost driver; the rest are in the shares
                weighted = float((counts * torch.tensor(opts, dtype=torch.float64)).sum())
                out[f"mean_{name}"] = weighted / total if total else math.nan
        sums, seen = self._reward_sum.cpu().tolist(), self._reward_seen.cpu().tolist()
        for i, name in enumerate((*TERMS, "")):
            key = f"reward_{name}" if name else "reward"
            out[key] = sums[i] / seen[i] if seen[i] else math.nan
        out["baseline"] = float(self.baseline) if self.baseline_ready else math.nan
        out["entropy"] = float(self._entropy_sum) / self._seen if self._seen else math.nan
        return out

    def summary(self, telemetry: dict[str, float], eps_text: Callable[[float], str]) -> str:
        """Mean sampled budget and attack iterations."""
        eps, iters = telemetry.get("mean_eps", math.nan), telemetry.get("mean_iters", math.nan)
        if math.isnan(eps):
            return ""
        return f"eps {eps_text(eps * self.unit)} iters {iters:.1f}"
