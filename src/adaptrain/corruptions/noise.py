"""Noise corruptions: Gaussian, shot (Poisson) and impulse (salt-and-pepper).

Noise is drawn independently for every value, so a 1-channel image gets grey noise and an RGB
image colour noise, as in both generators.
"""

from __future__ import annotations

import torch

from ._rng import Rng
from .tables import Table


def gaussian_noise(x: torch.Tensor, std: float, table: Table, rng: Rng) -> torch.Tensor:
    """``clip(x + N(0, std^2))``."""
    return (x + rng.normal(tuple(x.shape), 0.0, std)).clamp(0, 1)


def shot_noise(x: torch.Tensor, photons: float, table: Table, rng: Rng) -> torch.Tensor:
    """``clip(Poisson(x * photons) / photons)``: photon noise at ``photons`` per unit intensity."""
    return (rng.poisson(x * photons) / photons).clamp(0, 1)


def impulse_noise(x: torch.Tensor, amount: float, table: Table, rng: Rng) -> torch.Tensor:
    """skimage.util.random_noise(mode="s&p"): each value is replaced with probability ``amount``,
    by 1 or 0 with equal odds."""
    flipped = rng.bernoulli(tuple(x.shape), amount)
    salted = rng.bernoulli(tuple(x.shape), 0.5)
    return torch.where(flipped, salted.to(x.dtype), x)
