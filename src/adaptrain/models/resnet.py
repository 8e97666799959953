"""ResNet-18 / ResNet-50 (He et al., "Deep Residual Learning for Image Recognition", CVPR
2016) with the CIFAR stem used throughout adversarial training work: one 3x3 conv with
stride 1 and no max-pool.

Input (B, C, H, W) in [0, 1]; the four stages keep, then halve the resolution three times;
global average pooling makes any H, W >= 8 work. Features (B, 8 * width * expansion) with
expansion 1 (basic blocks) or 4 (bottlenecks); logits (B, num_classes).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .base import MODELS, ImageClassifier, NormKind, check_width, with_norm


def _projection(in_planes: int, out_planes: int, stride: int) -> nn.Module:
    """Identity when shapes match, otherwise 1x1 conv + BN."""
    if stride == 1 and in_planes == out_planes:
        return nn.Identity()
    return nn.Sequential(
        nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False), nn.BatchNorm2d(out_planes)
    )


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, added to the shortcut, then ReLU."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = _projection(in_planes, planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    """conv1x1-BN-ReLU-conv3x3(stride)-BN-ReLU-conv1x1(4x)-BN, plus shortcut, then ReLU."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out_planes = planes * self.expansion
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut = _projection(in_planes, out_planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


class ResNet(ImageClassifier):
    """Post-activation ResNet with a CIFAR stem (3x3 conv, stride 1, no max-pool)."""

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        num_blocks: Sequence[int],
        num_classes: int,
        in_channels: int,
        mean: Sequence[float],
        std: Sequence[float],
        width: int = 64,
    ) -> None:
        super().__init__(mean, std)
        self.conv1 = nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        layers: list[nn.Module] = []
        in_planes = width
        for i, n in enumerate(num_blocks):
            planes = width * 2**i
            for j in range(n):
                stride = 2 if i > 0 and j == 0 else 1
                layers.append(block(in_planes, planes, stride))
                in_planes = planes * block.expansion
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim = in_planes
        self.head = nn.Linear(in_planes, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def embed(self, z: torch.Tensor) -> torch.Tensor:
        """z: normalised (B, C, H, W) -> (B, feature_dim)."""
        out = F.relu(self.bn1(self.conv1(z)))
        return self.pool(self.layers(out)).flatten(1)


@MODELS.register("resnet18", validator=check_width)
def resnet18(
    *,
    num_classes: int,
    in_channels: int,
    image_size: tuple[int, int],
    mean: Sequence[float],
    std: Sequence[float],
    width: int = 64,
    norm: NormKind = "batch",
    sync_bn: bool = False,
) -> ResNet:
    """ResNet-18 (He et al. 2016), CIFAR stem; width 64 has ~11.17M parameters."""
    check_width({"width": width})
    model = ResNet(BasicBlock, (2, 2, 2, 2), num_classes, in_channels, mean, std, width)
    return with_norm(model, norm, sync_bn)


@MODELS.register("resnet50", validator=check_width)
def resnet50(
    *,
    num_classes: int,
    in_channels: int,
    image_size: tuple[int, int],
    mean: Sequence[float],
    std: Sequence[float],
    width: int = 64,
    norm: NormKind = "batch",
    sync_bn: bool = False,
) -> ResNet:
    """ResNet-50 (He et al. 2016), bottlenecks, CIFAR stem; width 64 has ~23.5M parameters."""
    check_width({"width": width})
    model = ResNet(Bottleneck, (3, 4, 6, 3), num_classes, in_channels, mean, std, width)
    return with_norm(model, norm, sync_bn)
