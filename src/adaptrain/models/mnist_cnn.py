"""The 2-conv 2-fc MNIST network of TRADES (Zhang et al. 2019, ``models/net_mnist.py``), which
the DRA paper (Hou et al., Section V-A) uses for MNIST.

Input (B, C, H, W) in [0, 1], normalised inside: conv5x5(w) - max-pool 2 - ReLU,
conv5x5(2w) - Dropout2d - max-pool 2 - ReLU, flatten, linear(5w) - ReLU - dropout giving the
features (B, 5w); logits = linear(5w -> classes). With width 10 on 28x28 MNIST this is exactly
TRADES's ``Net`` (10, 20 channels; 320 -> 50 -> 10). The convolutions are "valid" (no padding)
as in TRADES for inputs of at least 16 px; smaller inputs (8x8 digits) use padding 2 so that
the network still applies. No BatchNorm; dropout is off in eval mode.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .base import MODELS, ImageClassifier, NormKind, check_dropout, check_width, with_norm


def _out_size(size: int, pad: int) -> int:
    """Spatial size after conv5x5 (padding ``pad``) and a 2x2 max-pool, applied twice."""
    for _ in range(2):
        size = (size + 2 * pad - 4) // 2
    return size


class CNN2C2F(ImageClassifier):
    """TRADES's MNIST ``Net``: two 5x5 conv layers, two fully connected layers, dropout."""

    def __init__(self, num_classes: int, in_channels: int, image_size: tuple[int, int],
                 mean: Sequence[float], std: Sequence[float], width: int = 10,
                 dropout: float = 0.5) -> None:
        super().__init__(mean, std)
        pad = 0 if min(image_size) >= 16 else 2
        h, w = (_out_size(s, pad) for s in image_size)
        self.conv1 = nn.Conv2d(in_channels, width, 5, padding=pad)
        self.conv2 = nn.Conv2d(width, 2 * width, 5, padding=pad)
        self.conv2_drop = nn.Dropout2d(dropout)
        self.fc1 = nn.Linear(2 * width * h * w, 5 * width)
        self.drop = nn.Dropout(dropout)
        self.feature_dim = 5 * width
        self.head = nn.Linear(self.feature_dim, num_classes)

    def embed(self, z: torch.Tensor) -> torch.Tensor:
        """z: normalised (B, C, H, W) -> (B, feature_dim)."""
        out = F.relu(F.max_pool2d(self.conv1(z), 2))
        out = F.relu(F.max_pool2d(self.conv2_drop(self.conv2(out)), 2))
        return self.drop(F.relu(self.fc1(out.flatten(1))))


def check_cnn2c2f(fields: dict[str, Any]) -> None:
    check_width(fields)
    check_dropout(fields)


@MODELS.register("cnn2c2f", validator=check_cnn2c2f)
def cnn2c2f(
    *,
    num_classes: int,
    in_channels: int,
    image_size: tuple[int, int],
    mean: Sequence[float],
    std: Sequence[float],
    width: int = 10,
    dropout: float = 0.5,
    norm: NormKind = "batch",
    sync_bn: bool = False,
) -> CNN2C2F:
    """TRADES's 2-conv 2-fc MNIST CNN (width 10: 10/20 channels, 50 hidden), as used by DRA."""
    check_cnn2c2f({"width": width, "dropout": dropout})
    model = CNN2C2F(num_classes, in_channels, tuple(image_size), mean, std, width, dropout)
    return with_norm(model, norm, sync_bn)
