"""Train / validation / test splits, drawn with their own seed.

The validation set is held out of the training images by a permutation seeded with
``split_seed`` only, so runs that differ in their run seed still share one validation set.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import DataError
from .base import DataArrays, DataSpec


@dataclass
class Splits:
    """Images uint8 (N, C, H, W) and labels int64 (N,) for each split; validation may be empty."""

    spec: DataSpec
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def make_splits(
    arrays: DataArrays, *, subset: int | None, val_size: int, split_seed: int = 0
) -> Splits:
    """Hold out ``val_size`` training images for validation, then keep ``subset`` of the rest.

    The permutation of the training indices depends on ``split_seed`` alone: the first
    ``val_size`` indices form the validation set, the next ``subset`` (all if ``None``) the
    training set. ``val_size = 0`` gives empty validation tensors.
    """
    n = int(arrays.x_train.shape[0])
    if val_size < 0 or val_size >= n:
        raise DataError(
            "data.val_size",
            f"{val_size} must be between 0 and {n - 1} because {arrays.spec.name} has {n} "
            f"training images: choose a smaller data.val_size (0 validates on the test split)",
        )
    left = n - val_size
    if subset is not None:
        if subset < 1:
            raise DataError(
                "data.subset",
                f"{subset} must be at least 1: give a positive number of training images, "
                f"or null to use all {left}",
            )
        if subset > left:
            raise DataError(
                "data.subset",
                f"{subset} is larger than the {left} training images left after holding out "
                f"data.val_size={val_size}: set data.subset to at most {left} "
                f"or lower data.val_size",
            )
    generator = torch.Generator().manual_seed(int(split_seed))
    order = torch.randperm(n, generator=generator)
    val_idx = order[:val_size]
    train_idx = order[val_size:]
    if subset is not None:
        train_idx = train_idx[:subset]
    return Splits(
        spec=arrays.spec,
        x_train=arrays.x_train[train_idx],
        y_train=arrays.y_train[train_idx],
        x_val=arrays.x_train[val_idx],
        y_val=arrays.y_train[val_idx],
        x_test=arrays.x_test,
        y_test=arrays.y_test,
    )
