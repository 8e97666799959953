"""scikit-learn's 8x8 handwritten digits: embedded in the package, so always available offline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..registry import Traits
from .base import DATASETS, DataArrays, DataSpec

TEST_SIZE = 360  # of 1797 images; 1437 remain for training
_SPLIT_SEED = 0  # fixed: the split never depends on the run seed


def _stratified_test_indices(labels: np.ndarray, test_size: int) -> np.ndarray:
    """A fixed per-class sample of ``test_size`` indices, class proportions kept."""
    classes, counts = np.unique(labels, return_counts=True)
    quota = counts * test_size / len(labels)
    take = np.floor(quota).astype(np.int64)
    # Largest remainders get the images left over after flooring (ties: lower class first).
    extra = np.argsort(-(quota - take), kind="stable")[: test_size - int(take.sum())]
    take[extra] += 1
    rng = np.random.RandomState(_SPLIT_SEED)  # legacy generator: stable across numpy versions
    chosen = []
    for c, k in zip(classes, take, strict=True):
        members = np.flatnonzero(labels == c)
        chosen.append(members[rng.permutation(len(members))[:k]])
    return np.sort(np.concatenate(chosen))


# budgets print as decimals (0.1): the 0..16 features were rescaled, 1/255 is no step of theirs
@DATASETS.register("digits", traits=Traits(eps_denominator=None))
def digits(root: Path, download: bool = True) -> DataArrays:
    """scikit-learn's 8x8 grey digits (1437 train / 360 test), no download needed."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    pixels = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)  # 0..16 -> 0..255
    labels = bunch.target.astype(np.int64)
    test_idx = _stratified_test_indices(labels, TEST_SIZE)
    train_mask = np.ones(len(labels), dtype=bool)
    train_mask[test_idx] = False
    x = torch.from_numpy(pixels).unsqueeze(1)  # (N, 1, 8, 8)
    y = torch.from_numpy(labels)
    x_train, y_train = x[torch.from_numpy(train_mask)], y[torch.from_numpy(train_mask)]
    x_test, y_test = x[torch.from_numpy(test_idx)], y[torch.from_numpy(test_idx)]
    values = x_train.to(torch.float64) / 255.0
    spec = DataSpec(
        name="digits",
        num_classes=10,
        in_channels=1,
        image_size=(8, 8),
        mean=(float(values.mean()),),
        std=(float(values.std(correction=0)),),
        class_names=tuple(str(i) for i in range(10)),
    )
    return DataArrays(spec, x_train.contiguous(), y_train, x_test.contiguous(), y_test)
