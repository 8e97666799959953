"""Objectives registry: one file per objective, registered with ``@OBJECTIVES.register``."""

from __future__ import annotations

from . import mart, pgd_at, trades  # noqa: F401  (registration)
from .base import OBJECTIVES, Objective

__all__ = ["OBJECTIVES", "Objective"]
