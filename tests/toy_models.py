"""Tiny models the attack tests share: a linear classifier on flattened images, for which the
cross-entropy is convex in the input and optimal perturbations are known."""

from __future__ import annotations

import torch
from torch import nn


class Linear(nn.Module):
    """logits = W flatten(x) (+ 0 bias), W ~ N(0, 1) from ``seed``."""

    def __init__(self, d: int = 48, c: int = 5, seed: int = 0, *, bias: bool = True,
                 dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.fc = nn.Linear(d, c, bias=bias).to(dtype)
        with torch.no_grad():
            self.fc.weight.copy_(torch.randn(c, d, generator=g, dtype=dtype))
            if bias:
                self.fc.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))
