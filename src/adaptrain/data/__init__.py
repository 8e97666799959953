"""Data sets decoded once into uint8 tensors, splits, and an on-device batch loader."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..autoload import import_submodules
from .base import DATASETS, DataArrays, DataSpec, data_home
from .loader import BatchLoader
from .splits import Splits, make_splits

import_submodules(__name__, __path__, skip=("base", "extra", "loader", "splits"))

__all__ = [
    "DATASETS",
    "BatchLoader",
    "DataArrays",
    "DataSpec",
    "Splits",
    "data_home",
    "default_root",
    "eps_text",
    "load_arrays",
    "make_splits",
]


def default_root(name: str) -> Path:
    """``<data home>/<name>``: see :func:`.base.data_home` ($ADAPTRAIN_DATA, else
    $XDG_CACHE_HOME/adaptrain/data, else ~/.cache/adaptrain/data)."""
    return data_home() / name


def load_arrays(
    name: str, root: str | Path | None, download: bool = True, **fields: Any
) -> DataArrays:
    """Load the registered data set ``name`` from ``root`` (None: :func:`default_root`).

    Unknown names raise ConfigError naming ``data.name``; missing files raise DataError
    naming ``data.root``. ``fields`` go to the data set's own keyword arguments, if any.
    """
    entry = DATASETS.get(name)
    path = default_root(name) if root is None or str(root) == "" else Path(root).expanduser()
    return entry.builder(root=path, download=download, **fields)


def eps_text(eps: float, name: str) -> str:
    """A budget in [0, 1] units as the data set ``name`` writes it (its registered
    ``eps_denominator``): ``8/255`` for 8-bit images, ``0.1`` for digits; unknown names /255."""
    den = DATASETS.get(name).traits.eps_denominator if name in DATASETS else 255
    return f"{eps * den:.4g}/{den}" if den else f"{eps:.4g}"
