"""Robustness evaluation with the package's own attacks (clean, PGD-k-r, CW-k).

Every evaluation puts the model in eval mode (restored afterwards), feeds [0, 1] inputs and
counts an example as robust only if it is classified correctly both clean and under attack.
Attacks run only on the examples still correct (a sample already misclassified cannot
become "more" wrong), which is exact and saves time. Training's per-epoch model selection
calls :func:`evaluate_attacks` too, so training and ``adaptrain eval`` cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from .attacks import AttackPlan, pgd
from .config import parse_eval_attack


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, mode in modes:
            m.training = mode


def batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, device: torch.device
            ) -> Iterator[tuple[slice, torch.Tensor, torch.Tensor]]:
    """Yield (slice, x float [0,1] on device, y on device); x may be uint8 or float."""
    for start in range(0, x.shape[0], batch_size):
        sl = slice(start, min(start + batch_size, x.shape[0]))
        xb = x[sl].to(device, non_blocking=True)
        xb = xb.float().div_(255.0) if xb.dtype == torch.uint8 else xb.float()
        yield sl, xb, y[sl].to(device, non_blocking=True)


def eval_plan(kind: str, steps: int, restarts: int, *, eps: float, step_size: float,
              norm: str = "linf") -> AttackPlan:
    """PGD (CE) or CW-inf (PGD on the CW margin), uniform random start, eval-mode BN."""
    return AttackPlan(eps=eps, step_size=step_size, steps=steps, norm=norm,
                      loss="ce" if kind == "pgd" else "cw", random_start="uniform",
                      restarts=restarts, bn="eval")


def predict(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 256,
            device: torch.device | None = None) -> torch.Tensor:
    """(N,) bool: clean correctness."""
    device = device or next(model.parameters()).device
    out = torch.zeros(x.shape[0], dtype=torch.bool)
    with eval_mode(model), torch.no_grad():
        for sl, xb, yb in batches(x, y, batch_size, device):
            out[sl] = (model(xb).argmax(1) == yb).cpu()
    return out


def attack_correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor, spec: str, *,
                   eps: float, step_size: float, norm: str = "linf", batch_size: int = 256,
                   generator: torch.Generator | None = None, only: torch.Tensor | None = None,
                   device: torch.device | None = None) -> torch.Tensor:
    """(N,) bool: still correct under attack ``spec`` ('clean', 'pgd-20', 'cw-20', 'pgd-50-10').

    ``only`` (N,) bool restricts the attack to those examples; the rest count as wrong.
    """
    device = device or next(model.parameters()).device
    kind, steps, restarts = parse_eval_attack(spec, "attack")
    if kind == "clean":
        correct = predict(model, x, y, batch_size=batch_size, device=device)
        return correct if only is None else correct & only
    todo = torch.ones(x.shape[0], dtype=torch.bool) if only is None else only.clone()
    sel = todo.nonzero().squeeze(1)
    out = torch.zeros(x.shape[0], dtype=torch.bool)
    plan = eval_plan(kind, steps, restarts, eps=eps, step_size=step_size, norm=norm)
    with eval_mode(model):
        for sl, xb, yb in batches(x[sel], y[sel], batch_size, device):
            res = pgd(model, xb, yb, plan, generator=generator)
            with torch.no_grad():
                out[sel[sl]] = (model(res.x_adv).argmax(1) == yb).cpu()
    return out


def evaluate_attacks(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attacks: Sequence[str],
                     *, eps: float, step_size: float, norm: str = "linf", batch_size: int = 256,
                     seed: int = 0, device: torch.device | None = None
                     ) -> dict[str, torch.Tensor]:
    """Per-example correctness (N,) bool for ``clean`` and each attack (run on clean-correct
    examples only, so robust <= clean by construction)."""
    device = device or next(model.parameters()).device
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    clean = predict(model, x, y, batch_size=batch_size, device=device)
    out = {"clean": clean}
    for spec in attacks:
        if spec == "clean":
            continue
        out[spec] = attack_correct(model, x, y, spec, eps=eps, step_size=step_size, norm=norm,
                                   batch_size=batch_size, generator=gen, only=clean, device=device)
    return out
