"""The iterative attack engine shared by PGD, FAT, SA-PGD, LAS-AT and the inverse attacks.

One call runs ``steps.max()`` iterations of: forward the working batch, compute per-sample
losses, apply the early-stop rules, take one input-gradient step for the samples that go on,
project, clip to the box. A sample freezes once its own ``steps_i`` are used or a rule fires.

Active-set compaction (``compact=True``, valid with eval-mode BatchNorm, where samples are
independent): frozen samples leave the working batch, so a batch costs the *mean* of its
per-sample steps plus padding to one of ``WIDTHS`` sizes. Callers whose BatchNorm uses batch
statistics (``bn='train'`` or ``'batch'``) pass ``compact=False``: every row is forwarded and
frozen rows are masked. One host synchronisation per iteration (counting the active rows).
Gradients are taken w.r.t. delta only, with parameters frozen and the model's modes and flags
restored afterwards (:func:`frozen_model`). Shapes: x, delta (B, C, H, W) in [0, 1] image
units; eps, step_size, steps (B,). Why and what it costs: docs/design.md ("The attack engine").
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from ..threat import bcast, clip_box, project, steepest_direction
from .losses import LossFn
from .plan import AttackResult

# The compacted working batch is rounded up to a multiple of B // WIDTHS rows (padded with
# frozen rows, which are forwarded but never move), so it takes at most WIDTHS distinct sizes.
# Kernels are planned per input shape -- oneDNN's bounded primitive cache on CPU, cuDNN's
# autotuner (``cudnn.benchmark``) on CUDA -- and a batch shrinking through up to B sizes would
# pay that planning over and over (docs/las.md measures the difference).
WIDTHS = 16
EpsSchedule = Callable[[int], torch.Tensor]  # iteration t -> (B,) budget in effect at step t
# (x_rows, delta_rows, grad_rows, rows, active_rows) -> delta_rows, see :func:`run`
PostStep = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@contextmanager
def frozen_model(model: nn.Module, bn: str = "eval") -> Iterator[nn.Module]:
    """Freeze ``model``'s parameters and set its modes for an attack's (or a target's) passes:

    * ``'eval'``: every module in eval mode (BatchNorm on running statistics, no dropout);
    * ``'train'``: every module in train mode (BatchNorm uses *and updates* batch statistics);
    * ``'batch'``: only the BatchNorm layers in train mode, so they normalise by the batch's own
      statistics, and their running statistics are restored on exit; every other module --
      Dropout included -- stays in eval mode, so the passes are deterministic.

    On exit every module's mode and every parameter's ``requires_grad`` are restored."""
    if bn not in ("eval", "train", "batch"):
        raise ValueError(f"attack bn mode must be 'eval', 'train' or 'batch', got {bn!r}")
    modes = [(m, m.training) for m in model.modules()]
    flags = [(p, p.requires_grad) for p in model.parameters()]
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._NormBase)]
    saved = [(b, b.clone()) for m in norms for b in m.buffers()] if bn == "batch" else []
    try:
        model.train(bn == "train")
        if bn == "batch":
            for m in norms:
                m.train()
        for p, _ in flags:
            p.requires_grad_(False)
        yield model
    finally:
        for m, mode in modes:
            m.training = mode
        for p, flag in flags:
            p.requires_grad_(flag)
        with torch.no_grad():
            for b, value in saved:
                b.copy_(value)


def run(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    delta: torch.Tensor,
    *,
    eps: torch.Tensor | EpsSchedule,
    step_size: torch.Tensor,
    steps: torch.Tensor,
    norm: str,
    loss_fn: LossFn,
    direction: int = 1,
    project_ball: bool = True,
    stop_loss: torch.Tensor | None = None,
    stop_misclassified: torch.Tensor | None = None,
    compact: bool = True,
    final_eval: bool = False,
    post_step: PostStep | None = None,
) -> AttackResult:
    """Run the iterative attack from ``delta`` (B, C, H, W). The model must already be in the
    attack mode (:func:`frozen_model`); the caller owns the random start.

    eps: (B,) budget, or a schedule ``t -> (B,)`` (SA-PGD raises budgets during the run).
    step_size: (B,) step length in the norm's units; steps: (B,) int64 iterations per sample.
    stop_loss / stop_misclassified: (B,) early-stop thresholds (see AttackPlan).
    final_eval: forward the final iterate of samples that were not evaluated there yet
        (costs at most one extra forward, no backward) so that ``loss`` is complete.
    post_step: optional hook ``(x_rows, delta_rows, grad_rows, rows, active_rows) -> delta_rows``
        applied after the step and before projection (used by specialised attacks): ``rows``
        (W,) are the indices of the forwarded rows, ``active_rows`` (W,) bool says which of them
        were active before this step. The others are forwarded without being attacked (padding
        of the compacted batch, or frozen rows under masking) and must not leave a trace, or a
        sample's result would depend on the rest of its batch.

    Returns AttackResult with x_adv = x + delta, the last evaluated per-sample loss, the
    number of steps each sample took, ``info['eps']``: the budget in effect when each
    sample last moved (useful with a schedule), and ``info['misclassified']``: whether the
    last evaluated iterate of each sample was misclassified.
    """
    B = x.shape[0]
    device = x.device
    delta = delta.detach().clone()
    steps_used = torch.zeros(B, dtype=torch.int64, device=device)
    loss_out = torch.full((B,), float("nan"), device=device)
    evaluated = torch.zeros(B, dtype=torch.bool, device=device)
    mis_count = torch.zeros(B, dtype=torch.int64, device=device)
    mis_out = torch.zeros(B, dtype=torch.bool, device=device)
    active = steps > 0
    eps_of = eps if callable(eps) else (lambda t: eps)  # noqa: E731
    eps_final = eps_of(0).detach().clone() if B else torch.zeros(0, device=device)
    all_rows = torch.arange(B, device=device)
    n_iter = int(steps.max()) if B else 0  # one host sync for the whole run
    quantum = max(1, B // WIDTHS)

    def check(loss: torch.Tensor, logits: torch.Tensor, ys: torch.Tensor, rows: torch.Tensor,
              act: torch.Tensor) -> torch.Tensor:
        """Record the loss of evaluated rows; return which of them must freeze now."""
        loss_out[rows] = torch.where(act, loss, loss_out[rows])
        wrong = logits.argmax(dim=1) != ys
        mis_out[rows] = torch.where(act, wrong, mis_out[rows])
        stop = torch.zeros_like(act)
        if stop_loss is not None:
            rho = stop_loss[rows]
            stop |= (loss >= rho) if direction > 0 else (loss <= rho)
        if stop_misclassified is not None:
            mis = wrong & act
            count = mis_count[rows] + mis.long()
            mis_count[rows] = count
            stop |= mis & (count > stop_misclassified[rows])
        return stop & act

    for t in range(n_iter):
        if compact:
            m = int(active.sum())  # the one host sync per iteration
            if m == 0:
                break
            width = min(B, -(-m // quantum) * quantum)
            full = width == B
            rows = all_rows if full else torch.argsort((~active).to(torch.uint8), stable=True)[:width]
        else:
            if not bool(active.any()):
                break
            rows, full = all_rows, True
        xs = x if full else x[rows]
        ys = y if full else y[rows]
        ds = (delta if full else delta[rows]).requires_grad_(True)
        act = active if full else active[rows]
        loss, logits = loss_fn(model, xs + ds, ys, rows)
        loss = loss.float()
        (grad,) = torch.autograd.grad(loss.sum(), ds)
        loss = loss.detach()
        stop = check(loss, logits.detach(), ys, rows, act)
        go = act & ~stop
        e = eps_of(t)[rows] if not full else eps_of(t)
        ds = ds.detach()
        new = ds + bcast(direction * step_size[rows], ds) * steepest_direction(grad, norm)
        if post_step is not None:
            new = post_step(xs, new, grad, rows, act)
        if project_ball:
            new = project(new, e, norm)
        new = clip_box(xs, new)
        new = torch.where(bcast(go, new), new, ds)
        if full:
            delta = new
        else:
            delta.index_copy_(0, rows, new)
        used = steps_used[rows] + go.long()
        steps_used[rows] = used
        eps_final[rows] = torch.where(go, e, eps_final[rows])
        evaluated[rows] = torch.where(act, ~go, evaluated[rows])
        active[rows] = go & (used < steps[rows])

    if final_eval:
        pending = ~evaluated
        rows = pending.nonzero().squeeze(1) if compact else all_rows
        if rows.numel():
            full = rows.numel() == B
            xs = x if full else x[rows]
            ys = y if full else y[rows]
            with torch.no_grad():
                loss, logits = loss_fn(model, xs + (delta if full else delta[rows]), ys, rows)
            todo = pending[rows]
            loss_out[rows] = torch.where(todo, loss.float(), loss_out[rows])
            mis_out[rows] = torch.where(todo, logits.argmax(dim=1) != ys, mis_out[rows])

    x_adv = (x + delta).clamp_(0.0, 1.0)
    return AttackResult(x_adv=x_adv.detach(), loss=loss_out, steps_used=steps_used,
                        info={"eps": eps_final, "misclassified": mis_out})
