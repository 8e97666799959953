"""Exponential moving average of the weights (Gowal et al. 2020; Rebuffi et al. 2021).

After optimizer step t (0-based, counted over the whole run) the averaged weights become

    w_ema <- d_t * w_ema + (1 - d_t) * w,   d_t = 0                                  if t < T_w
                                             d_t = min(decay, (1 + s) / (10 + s)),  s = t - T_w

with T_w = ``warmup`` epochs x batches per epoch: during the warm-up the average copies the
weights, then the decay ramps up as in the authors' code (deepmind-research
adversarial_robustness/jax/utils.py ``ema_update``, TF-style dynamic decay; their warm-up is 0).
BatchNorm statistics: ``buffers="copy"`` (the authors' choice: the averaged weights are evaluated
with the live model's running statistics) copies every buffer at each update; ``"average"``
averages the floating-point buffers with the same d_t. Integer buffers (num_batches_tracked)
are always copied. d_t is a host float, so an update is two ``torch._foreach`` calls and no
host synchronisation. Config, decisions and measurements: docs/ema.md.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

BUFFER_MODES = ("copy", "average")


class EMA:
    """The averaged copy ``module`` of ``model``; ``update(step)`` after each optimizer step."""

    def __init__(self, model: nn.Module, decay: float, *, warmup_steps: int = 0,
                 buffers: str = "copy") -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        if buffers not in BUFFER_MODES:
            raise ValueError(f"buffers must be one of {BUFFER_MODES}, got {buffers!r}")
        self.model = model
        self.decay = float(decay)
        self.warmup_steps = int(warmup_steps)
        self.buffers = buffers
        self.module = copy.deepcopy(model).eval()
        self.module.requires_grad_(False)  # evaluated only: no gradient ever flows into it
        # (averaged, source) lists in matching order, for one foreach call each
        averaged = list(self.module.parameters())
        source = list(model.parameters())
        copied_dst: list[torch.Tensor] = []
        copied_src: list[torch.Tensor] = []
        for b, c in zip(self.module.buffers(), model.buffers(), strict=True):
            if buffers == "average" and b.is_floating_point():
                averaged.append(b)
                source.append(c)
            else:
                copied_dst.append(b)
                copied_src.append(c)
        self._averaged, self._source = averaged, source
        self._copied_dst, self._copied_src = copied_dst, copied_src

    def decay_at(self, step: int) -> float:
        """d_t for optimizer step ``step`` (0-based over the run)."""
        if step < self.warmup_steps:
            return 0.0
        s = step - self.warmup_steps
        return min(self.decay, (1.0 + s) / (10.0 + s))

    @torch.no_grad()
    def update(self, step: int) -> None:
        """Fold the model's current weights into the average (call after the optimizer step,
        and after AWP has taken its perturbation off again)."""
        d = self.decay_at(step)
        if d == 0.0:
            torch._foreach_copy_(self._averaged, self._source)
        else:
            # lerp: a + (1 - d) * (w - a) = d * a + (1 - d) * w
            torch._foreach_lerp_(self._averaged, self._source, 1.0 - d)
        if self._copied_dst:
            torch._foreach_copy_(self._copied_dst, self._copied_src)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The averaged weights and buffers (a model state dict: checkpoints store it as
        safetensors). The schedule needs no counter: it is a function of the global step."""
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.module.load_state_dict(state)
