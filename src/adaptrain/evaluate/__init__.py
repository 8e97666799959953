"""Robustness evaluation: clean, PGD-K-R, CW-K-R, FGSM, the official AutoAttack (standard /
rand / custom subsets), worst case over attacks (cascade or independent), eps-curves with
robustness disparity, corruption robustness, sanity checks, resumable state.

Training's per-epoch model selection calls :func:`evaluate_attacks`, which runs the same
attack code as ``adaptrain eval``, so the two cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..attacks import engine
from ..distributed import SINGLE, World
from . import shard
from .curve import plot_curves, robustness_disparity
from .guards import EvaluationError
from .runner import EvalSettings, Evaluator, evaluate
from .specs import AttackSpec, parse_list, parse_spec, parse_step
from .state import EvalState

__all__ = [
    "AttackSpec", "EvalSettings", "EvalState", "EvaluationError", "attack_correct",
    "evaluate", "evaluate_attacks", "parse_list", "parse_spec", "parse_step",
    "plot_curves", "robustness_disparity",
]


def evaluate_attacks(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attacks: Sequence[str],
                     *, eps: float, step_size: float, norm: str = "linf", batch_size: int = 256,
                     seed: int = 0, device: torch.device | None = None,
                     world: World = SINGLE) -> dict[str, torch.Tensor]:
    """Per-example correctness (N,) bool for ``clean`` and each attack, each attack run on the
    clean-correct examples (independent mode, no state file, no sanity checks).

    ``world``: under torchrun every rank calls this with the same model (the module itself,
    not its DistributedDataParallel wrapper, which is unwrapped here) and the same whole x, y;
    each rank attacks its share of the examples and every rank returns the whole (N,) results,
    example for example those of a single process."""
    model = shard.unwrap(model)
    device = device or next(model.parameters()).device
    settings = EvalSettings(attacks=list(attacks), eps=eps, step=step_size, norm=norm, seed=seed,
                            batch_size=batch_size, cascade=False)
    specs = parse_list(list(attacks))
    n = int(y.shape[0])
    state = EvalState(None, "", n)
    with engine.frozen_model(model, "eval"):
        ev = Evaluator(model, x, y, settings, state, device, progress=False, world=world)
        everything = torch.ones(n, dtype=torch.bool)
        clean = ev.run("clean", everything, ev.clean_chunk, keyed=True)
        out = {"clean": clean}
        for spec in specs[1:]:
            alive, _ = ev.entry("", spec, clean, eps, step_size)
            out[spec.name] = alive
    return out


def attack_correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor, spec: str, *,
                   eps: float, step_size: float, norm: str = "linf", batch_size: int = 256,
                   seed: int = 0, device: torch.device | None = None,
                   world: World = SINGLE) -> torch.Tensor:
    """(N,) bool: correct both clean and under ``spec`` ('pgd-20', 'cw-20', 'fgsm', 'apgd-ce')."""
    return evaluate_attacks(model, x, y, [spec], eps=eps, step_size=step_size, norm=norm,
                            batch_size=batch_size, seed=seed, device=device,
                            world=world)[parse_spec(spec).name]
