"""Per-sample attack losses.

A loss function has the signature ``loss_fn(model, x_in, y, rows) -> (loss (b,), logits (b, C))``
where ``x_in`` are the current (possibly compacted) inputs, ``y`` their labels and ``rows``
their positions in the full batch (so that per-sample references such as TRADES's clean
logits can be gathered). Returning the logits lets the engine apply the misclassification
early-stop rule without a second forward pass.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError

LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
LOSSES = ("ce", "cw", "kl")


def cw_margin(logits: torch.Tensor, y: torch.Tensor, kappa: float = 50.0) -> torch.Tensor:
    """Carlini-Wagner margin max_{j != y} z_j - z_y, capped at kappa: (B, C) -> (B,)."""
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf")).amax(dim=1)
    return torch.clamp(other - z_y, max=kappa)


def kl_to_ref(logits: torch.Tensor, ref_logits: torch.Tensor) -> torch.Tensor:
    """KL(softmax(ref) || softmax(logits)) per sample, as TRADES's inner loss: (B,)."""
    ref_logp = F.log_softmax(ref_logits.float(), dim=1)
    logp = F.log_softmax(logits.float(), dim=1)
    return (ref_logp.exp() * (ref_logp - logp)).sum(dim=1)


def make_loss(name: str, ref_logits: torch.Tensor | None = None) -> LossFn:
    """Built-in losses: ``ce`` (cross-entropy), ``cw`` (CW margin), ``kl`` (TRADES)."""
    if name == "ce":
        def ce(model: nn.Module, x_in: torch.Tensor, y: torch.Tensor, rows: torch.Tensor):
            logits = model(x_in)
            return F.cross_entropy(logits.float(), y, reduction="none"), logits
        return ce
    if name == "cw":
        def cw(model: nn.Module, x_in: torch.Tensor, y: torch.Tensor, rows: torch.Tensor):
            logits = model(x_in)
            return cw_margin(logits.float(), y), logits
        return cw
    if name == "kl":
        if ref_logits is None:
            raise ValueError("the kl attack loss needs the clean logits (plan.ref_logits)")
        ref = ref_logits.detach()

        def kl(model: nn.Module, x_in: torch.Tensor, y: torch.Tensor, rows: torch.Tensor):
            logits = model(x_in)
            return kl_to_ref(logits, ref[rows]), logits
        return kl
    raise ConfigError("attack.loss", f"unknown {name!r}; allowed: {', '.join(LOSSES)}")
