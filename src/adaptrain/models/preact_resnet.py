"""PreActResNet-18 as in Rice, Wong & Kolter, "Overfitting in adversarially robust deep
learning" (ICML 2020), after He et al., "Identity Mappings in Deep Residual Networks" (2016).

Input (B, C, H, W) in [0, 1]; a 3x3 stem keeps the resolution, the four stages halve it
(except the first); global average pooling makes any H, W >= 8 work (32x32, 64x64, ...).
Features (B, 8 * width); logits (B, num_classes). Full width (64) has ~11.17M parameters.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .base import MODELS, ImageClassifier, NormKind, check_width, with_norm


class PreActBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-conv3x3 plus a shortcut (1x1 conv on the activated input)."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        shortcut = x if self.shortcut is None else self.shortcut(out)
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet(ImageClassifier):
    """Pre-activation ResNet with a CIFAR stem and a final BN-ReLU before pooling."""

    def __init__(
        self,
        num_blocks: Sequence[int],
        num_classes: int,
        in_channels: int,
        mean: Sequence[float],
        std: Sequence[float],
        width: int = 64,
    ) -> None:
        super().__init__(mean, std)
        self.conv1 = nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False)
        layers: list[nn.Module] = []
        in_planes = width
        for i, n in enumerate(num_blocks):
            planes = width * 2**i
            for j in range(n):
                stride = 2 if i > 0 and j == 0 else 1
                layers.append(PreActBlock(in_planes, planes, stride))
                in_planes = planes
        self.layers = nn.Sequential(*layers)
        self.bn = nn.BatchNorm2d(in_planes)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim = in_planes
        self.head = nn.Linear(in_planes, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def embed(self, z: torch.Tensor) -> torch.Tensor:
        """z: normalised (B, C, H, W) -> (B, feature_dim)."""
        out = self.layers(self.conv1(z))
        out = F.relu(self.bn(out))
        return self.pool(out).flatten(1)


@MODELS.register("preact_resnet18", validator=check_width)
def preact_resnet18(
    *,
    num_classes: int,
    in_channels: int,
    image_size: tuple[int, int],
    mean: Sequence[float],
    std: Sequence[float],
    width: int = 64,
    norm: NormKind = "batch",
    sync_bn: bool = False,
) -> PreActResNet:
    """PreActResNet-18 (Rice et al. 2020); width 64 has ~11.17M parameters."""
    check_width({"width": width})
    model = PreActResNet((2, 2, 2, 2), num_classes, in_channels, mean, std, width)
    return with_norm(model, norm, sync_bn)
