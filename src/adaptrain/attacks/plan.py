"""AttackPlan (what a strategy asks for) and AttackResult (what an attack returns)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch

from ..threat import per_sample

Scalar = torch.Tensor | float | int


@dataclass
class AttackPlan:
    """Per-sample attack settings for one batch.

    ``eps``, ``step_size`` and ``steps`` are (B,) tensors or scalars (broadcast); budgets are
    in [0, 1] image units. ``None`` fields are filled once, by ``Attack.resolve`` (its
    docstring has the precedence table), before the attack runs.

    Early-stop rules (per sample, may be scalars):
      * ``stop_loss`` rho_i: freeze the sample as soon as its loss >= rho_i (SAAT); with
        ``direction=-1`` as soon as loss <= rho_i.
      * ``stop_misclassified`` tau_i: count the checks at which the sample is misclassified and
        freeze it at the (tau_i + 1)-th, i.e. tau_i steps after its first misclassification
        (FAT, Zhang et al. 2020, as their ``earlystop`` code counts).

    ``beta`` (B,) is a per-sample weight of the objective's regularising term (TRADES / MART
    / replay), chosen by the strategy (LAS-AT); None: the objective's own scalar. Attacks
    ignore it. An attack's own settings (SA-PGD's search, DRA's kept fraction) are fields of
    the configured :class:`~adaptrain.attacks.base.Attack`, not of the plan.
    """

    eps: Scalar
    step_size: Scalar
    steps: Scalar
    norm: str | None = None
    loss: str = "ce"  # ce | cw | kl (kl needs ``ref_logits``)
    direction: int = 1  # +1 maximise the loss, -1 minimise it
    random_start: str | None = None  # uniform | normal | none
    init_scale: float = 1.0  # random-start radius = init_scale * eps (N-FGSM uses 2)
    project: bool = True  # keep delta inside the eps-ball after each step (N-FGSM: False)
    stop_loss: Scalar | None = None
    stop_misclassified: Scalar | None = None
    restarts: int = 1
    bn: str | None = None  # eval | train: BatchNorm mode while crafting
    ref_logits: torch.Tensor | None = None  # (B, C) clean logits for the KL loss
    beta: torch.Tensor | None = None  # (B,) per-sample objective weight (LAS-AT), see above

    def replace(self, **changes: Any) -> AttackPlan:
        return dataclasses.replace(self, **changes)

    def tensors(self, batch: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(eps, step_size, steps) as (B,) tensors: float32, float32, int64."""
        eps = per_sample(self.eps, batch, device=device)
        alpha = per_sample(self.step_size, batch, device=device)
        steps = per_sample(self.steps, batch, device=device, dtype=torch.int64)
        return eps, alpha, steps


@dataclass
class AttackResult:
    """What an attack returns.

    x_adv: (B, C, H, W) in [0, 1].
    loss: (B,) loss of x_adv when it was evaluated (early stop, ``final_eval`` or restarts);
        NaN where it was not.
    steps_used: (B,) int64 gradient steps each sample took.
    info: per-sample extras from specialised attacks (e.g. SA-PGD's final budget ``eps``).
    """

    x_adv: torch.Tensor
    loss: torch.Tensor
    steps_used: torch.Tensor
    info: dict[str, torch.Tensor] = field(default_factory=dict)
