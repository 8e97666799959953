"""Regularisers: per-sample terms added to any objective's loss (GradAlign, ...). One file per
regulariser; every module in this package is imported, so its ``@REGULARIZERS.register`` line
is all a new one needs."""

from __future__ import annotations

from ..autoload import import_submodules
from .base import REGULARIZERS, Regularizer

import_submodules(__name__, __path__)

__all__ = ["REGULARIZERS", "Regularizer"]
