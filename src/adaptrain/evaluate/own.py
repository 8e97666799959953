"""The package's own evaluation attacks on one chunk: PGD-K-R (CE), CW-K-R (PGD on the CW
margin, Carlini & Wagner's loss as TRADES / MART report it), FGSM.

Threat model: ||x_adv_i - x_i||_p <= eps, x_adv in [0, 1], model in eval mode. A sample counts
as broken as soon as any iterate misclassifies it (the engine's misclassification rule with
tau = 0 freezes it there, which is also cheaper than running every step); restarts run only
on the samples no earlier restart broke. Random starts are keyed by example index
(:func:`adaptrain.threat.keyed_start`), so a sample's result does not depend on which other
samples share its batch: cascade, resume and batch size cannot change it.
"""

from __future__ import annotations

import zlib

import torch
from torch import nn

from ..attacks import engine, make_loss
from ..threat import clip_box, keyed_start
from .specs import AttackSpec


def stream_id(*parts: object) -> int:
    """A stable small integer for a tuple of names (keeps random streams of attacks apart)."""
    return zlib.crc32(repr(parts).encode()) & 0x7FFFFFFF


def own_correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor, keys: torch.Tensor,
                spec: AttackSpec, *, eps: float, step_size: float, norm: str, seed: int
                ) -> torch.Tensor:
    """(b,) bool: still correctly classified after ``spec``. x (b, C, H, W) in [0, 1], y (b,),
    keys (b,) example indices. The model must already be frozen in eval mode."""
    b = x.shape[0]
    device = x.device
    correct = torch.ones(b, dtype=torch.bool, device=device)
    if b == 0 or spec.kind == "clean":
        with torch.no_grad():
            return model(x).argmax(1) == y if b else correct
    eps_t = torch.full((b,), float(eps), device=device)
    loss_fn = make_loss("cw" if spec.kind == "cw" else "ce")
    steps = spec.steps
    alpha = float(eps) if spec.kind == "fgsm" else float(step_size)
    for r in range(spec.restarts):
        rows = correct.nonzero().squeeze(1)
        if rows.numel() == 0:
            break
        xs, ys, e = x[rows], y[rows], eps_t[rows]
        if spec.kind == "fgsm":
            delta0 = torch.zeros_like(xs)
        else:
            delta0 = clip_box(xs, keyed_start(keys[rows], xs, e, norm, seed,
                                              stream_id(spec.kind, r)))
        res = engine.run(model, xs, ys, delta0, eps=e, step_size=torch.full_like(e, alpha),
                         steps=torch.full((rows.numel(),), steps, dtype=torch.int64, device=device),
                         norm=norm, loss_fn=loss_fn,
                         stop_misclassified=torch.zeros(rows.numel(), dtype=torch.int64, device=device),
                         compact=True, final_eval=True)
        correct[rows] = ~res.info["misclassified"]
    return correct
