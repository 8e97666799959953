"""The model contract every registered architecture follows.

Models take images in [0, 1] of shape (B, C, H, W), normalise inside, and return logits
(B, num_classes). ``features(x)`` returns the penultimate activations (B, feature_dim),
used by UIAT's feature regulariser; ``forward(x) == head(features(x))``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import nn

from ..component import MAX_WIDTH, require_in
from ..registry import Registry

# Builders receive these from the data set, the rest of their keyword arguments come from
# the ``model:`` config section (e.g. ``width``, ``depth``, ``widen_factor``).
MODELS: Registry[nn.Module] = Registry(
    "model", injected=("num_classes", "in_channels", "image_size", "mean", "std")
)


# Every architecture registers a ``validator`` (a pure check of its fields): config validation
# runs it instead of building a network of up to ~50M parameters just to check a number.


def check_width(fields: dict[str, Any]) -> None:
    """The base channel width (``model.width``) of every architecture: 1 .. MAX_WIDTH."""
    require_in(fields["width"], "model.width", 1, MAX_WIDTH,
               why="parameters grow with its square; 64 is the ResNets' standard")


NormKind = Literal["batch", "group", "none"]


def with_norm(model: nn.Module, norm: str, sync_bn: bool = False) -> nn.Module:
    """``model`` with every BatchNorm2d as ``norm``: ``batch`` keeps it (``sync_bn``: as
    SyncBatchNorm, whose statistics span every rank; CUDA only), ``group`` makes it a GroupNorm
    of gcd(C, 32) groups (statistics per sample, so sharding a batch cannot change them),
    ``none`` an identity. Conversion draws no random numbers: the other weights initialise as
    with BatchNorm."""
    if norm == "batch":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model) if sync_bn else model
    for name, child in model.named_children():
        if isinstance(child, nn.BatchNorm2d):
            c = child.num_features
            setattr(model, name, nn.GroupNorm(math.gcd(c, 32), c) if norm == "group" else nn.Identity())
        else:
            with_norm(child, norm)
    return model


def check_dropout(fields: dict[str, Any]) -> None:
    require_in(fields["dropout"], "model.dropout", 0, 1, high_open=True)


class ImageClassifier(nn.Module):
    """Base class: normalisation buffers, ``features`` and a linear ``head``."""

    feature_dim: int

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        c = len(mean)
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, c, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, c, 1, 1))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def embed(self, z: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """Penultimate features from the *normalised* input ``z``."""
        raise NotImplementedError

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) in [0, 1] -> (B, feature_dim)."""
        return self.embed(self.normalize(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) in [0, 1] -> logits (B, num_classes)."""
        return self.head(self.features(x))


def first_nonfinite(model: nn.Module) -> str | None:
    """Name of the first weight or buffer holding NaN or inf, else None; one host sync for
    the whole model (a diverged run shows here first, often in BatchNorm running variances)."""
    tensors = [(k, t.detach()) for k, t in model.state_dict().items()
               if t.is_floating_point() or t.is_complex()]
    if not tensors or bool(torch.stack([torch.isfinite(t).all() for _, t in tensors]).all()):
        return None
    return next(k for k, t in tensors if not bool(torch.isfinite(t).all()))
