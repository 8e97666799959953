"""Shared base for stateful training components (strategies, objectives)."""

from __future__ import annotations

from typing import Any

import torch

from .errors import ConfigError


def require(ok: bool, field: str, message: str) -> None:
    """Raise ConfigError(field, message) unless ``ok``."""
    if not ok:
        raise ConfigError(field, message)


class Component:
    """State lives in attributes listed in ``state_keys`` (tensors, numbers, dicts, generators,
    modules, optimisers); ``state_dict`` / ``load_state_dict`` round-trip them for checkpoints."""

    state_keys: tuple[str, ...] = ()

    def start_epoch(self, epoch: int) -> None:
        """Called before the first batch of ``epoch`` (0-based)."""

    def end_epoch(self, epoch: int) -> dict[str, float]:
        """Telemetry for ``RUN/strategy.csv`` (strategies) or ``metrics.csv`` (objectives)."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key in self.state_keys:
            value = getattr(self, key)
            if isinstance(value, torch.Generator):
                out[key] = {"generator_state": value.get_state()}
            elif hasattr(value, "state_dict"):
                out[key] = {"module_state": value.state_dict()}
            elif isinstance(value, torch.Tensor):
                out[key] = value.detach().clone()
            else:
                out[key] = value
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in self.state_keys:
            if key not in state:
                raise KeyError(f"checkpoint lacks {type(self).__name__}.{key}")
            value, current = state[key], getattr(self, key)
            if isinstance(current, torch.Generator):
                current.set_state(value["generator_state"])
            elif hasattr(current, "load_state_dict"):
                current.load_state_dict(value["module_state"])
            elif isinstance(current, torch.Tensor):
                current.copy_(value)
            else:
                setattr(self, key, value)
