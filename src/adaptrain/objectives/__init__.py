"""Objectives: what the model is trained on. One file per objective; every module in this
package is imported, so its ``@OBJECTIVES.register`` line is all a new objective needs."""

from __future__ import annotations

from ..autoload import import_submodules
from .base import OBJECTIVES, Objective

import_submodules(__name__, __path__)

__all__ = ["OBJECTIVES", "Objective"]
