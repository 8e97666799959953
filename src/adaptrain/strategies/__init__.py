"""Strategies registry: one file per strategy, registered with ``@STRATEGIES.register``."""

from __future__ import annotations

from . import fixed, none  # noqa: F401  (registration)
from .base import STRATEGIES, Strategy

__all__ = ["STRATEGIES", "Strategy"]
