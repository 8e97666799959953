"""A small convolutional network for tiny inputs and fast tests: 8x8 scikit-learn digits,
28x28 MNIST, 32x32 CIFAR. Not from a paper; shaped like the "SmallCNN" of TRADES (Zhang et
al. 2019) but with BatchNorm and global average pooling so that any H, W >= 2 works.

Input (B, C, H, W) in [0, 1]: conv(w)-BN-ReLU, conv(2w)-BN-ReLU, 2x2 max-pool (H/2, W/2),
conv(2w)-BN-ReLU, conv(4w)-BN-ReLU, global average pool (B, 4w), linear(4w)-ReLU giving the
features (B, 4w); logits (B, num_classes).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .base import MODELS, ImageClassifier, NormKind, check_width, with_norm


def _conv_bn_relu(in_planes: int, planes: int) -> list[nn.Module]:
    conv = nn.Conv2d(in_planes, planes, 3, padding=1, bias=False)
    return [conv, nn.BatchNorm2d(planes), nn.ReLU()]


class SmallCNN(ImageClassifier):
    """Four 3x3 conv-BN-ReLU layers, one max-pool, global average pool, a hidden linear layer."""

    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        mean: Sequence[float],
        std: Sequence[float],
        width: int = 32,
    ) -> None:
        super().__init__(mean, std)
        self.body = nn.Sequential(
            *_conv_bn_relu(in_channels, width),
            *_conv_bn_relu(width, 2 * width),
            nn.MaxPool2d(2),
            *_conv_bn_relu(2 * width, 2 * width),
            *_conv_bn_relu(2 * width, 4 * width),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(4 * width, 4 * width),
            nn.ReLU(),
        )
        self.feature_dim = 4 * width
        self.head = nn.Linear(self.feature_dim, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def embed(self, z: torch.Tensor) -> torch.Tensor:
        """z: normalised (B, C, H, W) -> (B, feature_dim)."""
        return self.body(z)


@MODELS.register("small_cnn", validator=check_width)
def small_cnn(
    *,
    num_classes: int,
    in_channels: int,
    image_size: tuple[int, int],
    mean: Sequence[float],
    std: Sequence[float],
    width: int = 32,
    norm: NormKind = "batch",
    sync_bn: bool = False,
) -> SmallCNN:
    """Small CNN (4 conv-BN-ReLU, global pool, hidden linear) for digits / MNIST / tests."""
    check_width({"width": width})
    model = SmallCNN(num_classes, in_channels, mean, std, width)
    return with_norm(model, norm, sync_bn)
