"""The random draws of one :func:`adaptrain.corruptions.corrupt` call.

All numbers come from one seeded CPU generator and are moved to the batch's device afterwards,
so a batch gets the same corruption on every device. Every draw goes through :meth:`Rng._emit`;
the tests record draws there and replay them to the reference implementation.
"""

from __future__ import annotations

import torch


class Rng:
    def __init__(self, seed: int, device: torch.device | str = "cpu") -> None:
        self.gen = torch.Generator().manual_seed(int(seed))
        self.device = torch.device(device)

    def _emit(self, kind: str, value: torch.Tensor) -> torch.Tensor:
        return value.to(self.device)

    def normal(self, shape: tuple[int, ...], mean: float = 0.0, std: float = 1.0,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
        z = torch.randn(shape, generator=self.gen, dtype=dtype)
        return self._emit("normal", z * std + mean)

    def uniform(self, shape: tuple[int, ...], low: float, high: float,
                dtype: torch.dtype = torch.float32) -> torch.Tensor:
        u = torch.rand(shape, generator=self.gen, dtype=dtype)
        return self._emit("uniform", low + (high - low) * u)

    def randint(self, shape: tuple[int, ...], low: int, high: int) -> torch.Tensor:
        """Integers in [low, high)."""
        return self._emit("randint", torch.randint(low, high, shape, generator=self.gen))

    def below(self, high: torch.Tensor) -> torch.Tensor:
        """One integer in [0, high[i]) per entry of the (CPU, integer) tensor ``high``."""
        u = torch.rand(high.shape, generator=self.gen, dtype=torch.float64)
        return self._emit("randint", (u * high).floor().long().clamp(max=high - 1))

    def bernoulli(self, shape: tuple[int, ...], p: float) -> torch.Tensor:
        return self._emit("bernoulli", torch.rand(shape, generator=self.gen) < p)

    def poisson(self, rate: torch.Tensor) -> torch.Tensor:
        counts = torch.poisson(rate.detach().float().cpu(), generator=self.gen)
        return self._emit("poisson", counts)
