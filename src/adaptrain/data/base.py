"""What every registered data set returns: decoded uint8 arrays plus a description."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..registry import Registry


@dataclass(frozen=True)
class DataSpec:
    """Static facts about a data set; models are built from them."""

    name: str
    num_classes: int
    in_channels: int
    image_size: tuple[int, int]  # (H, W)
    mean: tuple[float, ...]  # per channel, on [0, 1] images
    std: tuple[float, ...]
    class_names: tuple[str, ...] = ()


@dataclass
class DataArrays:
    """Whole splits in memory: images uint8 (N, C, H, W), labels int64 (N,)."""

    spec: DataSpec
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


# A data set loader: (root directory, whether it may download) -> DataArrays.
# It raises DataError with a one-line, actionable message when the files are missing.
DatasetLoader = Callable[[Path, bool], DataArrays]
DATASETS: Registry[DataArrays] = Registry("data", injected=("root", "download"))


def data_home() -> Path:
    """Where data and decoded caches live unless ``data.root`` says otherwise:
    ``$ADAPTRAIN_DATA``, else ``$XDG_CACHE_HOME/adaptrain/data``, else
    ``~/.cache/adaptrain/data``."""
    base = os.environ.get("ADAPTRAIN_DATA")
    if base:
        return Path(base).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "adaptrain" / "data"
