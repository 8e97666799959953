"""Strategies: who decides each sample's attack. One file per strategy; every module in this
package is imported, so its ``@STRATEGIES.register`` line is all a new strategy needs."""

from __future__ import annotations

from ..autoload import import_submodules
from .base import STRATEGIES, Strategy

import_submodules(__name__, __path__)

__all__ = ["STRATEGIES", "Strategy"]
