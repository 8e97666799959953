"""Wide residual networks (Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016) in the
form used by TRADES (Zhang et al. 2019) and AWP (Wu et al. 2020): pre-activation blocks,
three groups of (depth - 4) / 6 blocks with channels width * (k, 2k, 4k) after a
``width``-channel 3x3 stem, a final BN-ReLU and global average pooling.

Input (B, C, H, W) in [0, 1] (the second and third groups halve the resolution); features
(B, 4 * width * k); logits (B, num_classes). WRN-34-10 has ~46.16M parameters.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..component import require, require_in
from .base import MODELS, ImageClassifier, NormKind, check_dropout, check_width, with_norm


class WideBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-[dropout]-conv3x3; a 1x1 conv shortcut when shapes change."""

    def __init__(self, in_planes: int, planes: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        # as in the reference code, a projection shortcut sees the activated input
        shortcut = x if self.shortcut is None else self.shortcut(out)
        out = F.relu(self.bn2(self.conv1(out)))
        out = self.conv2(self.dropout(out))
        return out + shortcut


class WideResNet(ImageClassifier):
    """WRN-depth-k: stem conv, three groups of wide blocks, BN-ReLU, pool, linear head."""

    def __init__(
        self,
        depth: int,
        widen_factor: int,
        num_classes: int,
        in_channels: int,
        mean: Sequence[float],
        std: Sequence[float],
        width: int = 16,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(mean, std)
        n = (depth - 4) // 6
        self.conv1 = nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False)
        layers: list[nn.Module] = []
        in_planes = width
        for i, stride in enumerate((1, 2, 2)):
            planes = width * widen_factor * 2**i
            for j in range(n):
                layers.append(WideBlock(in_planes, planes, stride if j == 0 else 1, dropout))
                in_planes = planes
        self.layers = nn.Sequential(*layers)
        self.bn = nn.BatchNorm2d(in_planes)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim = in_planes
        self.head = nn.Linear(in_planes, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(self.head.bias)

    def embed(self, z: torch.Tensor) -> torch.Tensor:
        """z: normalised (B, C, H, W) -> (B, feature_dim)."""
        out = self.layers(self.conv1(z))
        out = F.relu(self.bn(out))
        return self.pool(out).flatten(1)


MAX_DEPTH, MAX_WIDEN = 1000, 64  # WRN-1000 has ~1.4e9 parameters at k 10; the literature stops at k 20


def check_wrn(fields: dict[str, Any]) -> None:
    depth = fields["depth"]
    require(10 <= depth <= MAX_DEPTH and (depth - 4) % 6 == 0, "model.depth",
            f"{depth} is not 6n + 4 in [10, {MAX_DEPTH}]; allowed: 10, 16, 22, 28, 34, 40, ...")
    require_in(fields["widen_factor"], "model.widen_factor", 1, MAX_WIDEN)
    check_width(fields)
    check_dropout(fields)


@MODELS.register("wrn", validator=check_wrn)
def wrn(
    *,
    num_classes: int,
    in_channels: int,
    image_size: tuple[int, int],
    mean: Sequence[float],
    std: Sequence[float],
    depth: int = 34,
    widen_factor: int = 10,
    width: int = 16,
    dropout: float = 0.0,
    norm: NormKind = "batch",
    sync_bn: bool = False,
) -> WideResNet:
    """WideResNet-depth-k as in TRADES / AWP; depth 34, k 10 has ~46.16M parameters."""
    check_wrn({"depth": depth, "widen_factor": widen_factor, "width": width, "dropout": dropout})
    model = WideResNet(depth, widen_factor, num_classes, in_channels, mean, std, width, dropout)
    return with_norm(model, norm, sync_bn)
