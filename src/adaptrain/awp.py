"""Adversarial weight perturbation (Wu et al. 2020, "Adversarial Weight Perturbation Helps
Robust Generalization", Eq. 9-10) as perturb / restore around any objective.

Per batch a persistent proxy copy of the model takes one plain-SGD ascent step on the run's
full training loss (objective + regulariser, ``commit=False``); for every weight tensor with
>= 2 dims (conv, linear; never BatchNorm parameters or biases) the change d_l = w_proxy_l - w_l
is rescaled to v_l = gamma * ||w_l|| * d_l / ||d_l||. ``perturb`` adds v to the real model,
the loss and optimiser step are computed there, ``restore`` subtracts v again. gamma is
relative (unitless); the proxy's BatchNorm buffers are its own, so the real model's running
statistics are never touched by it. Cost: +1 forward and backward of the training loss.
Decisions (proxy mode, proxy learning rate): docs/baselines.md.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .distributed import SINGLE, World

_EPS = 1e-20


class AWP:
    """``perturb(loss_of)`` with ``loss_of(model) -> scalar loss``; then ``restore()``."""

    def __init__(self, model: nn.Module, cfg: Any, world: World = SINGLE) -> None:
        self.model = model
        self.world = world  # the proxy's ascent uses the gradient of the global batch
        self.gamma = float(cfg.gamma)
        self.proxy = copy.deepcopy(model)
        self.proxy_opt = torch.optim.SGD(self.proxy.parameters(), lr=float(cfg.proxy_lr))
        # the (real, proxy) parameter pairs that AWP perturbs: weights of conv / linear layers
        self.pairs = [(p, q) for p, q in zip(model.parameters(), self.proxy.parameters(), strict=True)
                      if p.ndim >= 2]
        self.diff: list[torch.Tensor] | None = None

    @torch.no_grad()
    def _sync_proxy(self) -> None:
        for p, q in zip(self.model.parameters(), self.proxy.parameters(), strict=True):
            q.copy_(p)
        for b, c in zip(self.model.buffers(), self.proxy.buffers(), strict=True):
            c.copy_(b)

    def perturb(self, loss_of: Callable[[nn.Module], torch.Tensor]) -> None:
        """Compute the layer-wise perturbation on the proxy and add it to the real weights."""
        if self.diff is not None:
            raise RuntimeError("AWP.perturb called twice without restore")
        self._sync_proxy()
        self.proxy.train()
        self.proxy_opt.zero_grad(set_to_none=True)
        (-loss_of(self.proxy)).backward()
        self.world.sum_grads_(self.proxy.parameters())  # each rank's share of the global mean
        self.proxy_opt.step()
        self.proxy_opt.zero_grad(set_to_none=True)  # free the proxy's gradients until next batch
        with torch.no_grad():
            diff = []
            for p, q in self.pairs:
                d = q - p
                diff.append(self.gamma * p.norm() / (d.norm() + _EPS) * d)
            for (p, _), v in zip(self.pairs, diff, strict=True):
                p.add_(v)
        self.diff = diff

    @torch.no_grad()
    def restore(self) -> None:
        """Subtract the perturbation added by the last ``perturb`` (after the optimiser step)."""
        if self.diff is None:
            return
        for (p, _), v in zip(self.pairs, self.diff, strict=True):
            p.sub_(v)
        self.diff = None

    def offsets(self) -> dict[int, torch.Tensor]:
        """The perturbation v now on the weights (between ``perturb`` and ``restore``), by
        ``id(param)``; empty when none is. A strategy that reasons about the weights the
        optimiser step will produce (LAS-AT's look-ahead) takes it off: (w + v - lr g) - v."""
        if self.diff is None:
            return {}
        return {id(p): v for (p, _), v in zip(self.pairs, self.diff, strict=True)}

    def state_dict(self) -> dict[str, Any]:
        return {}  # the proxy is re-synchronised from the model every batch

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None
