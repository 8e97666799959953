"""The 15 common corruptions of CIFAR-10-C / ImageNet-C (Hendrycks & Dietterich, ICLR 2019),
generated locally and batched in torch.

``corrupt(x, name, severity)`` corrupts a batch ``(N, C, H, W)`` (uint8, or float in [0, 1];
C = 1 or 3) and returns float32 in [0, 1] on the batch's device. Two constant tables:
``cifar`` (make_cifar_c.py, the generator of the published CIFAR-10-C, calibrated for 32x32) and
``imagenet`` (the PyPI package imagecorruptions 1.1.2, i.e. ImageNet-C); ``table="auto"`` takes
``cifar`` for images up to 64 px and ``imagenet`` above. Deviations from the original
generators are listed in docs/corruptions.md.

Random draws come from one CPU generator seeded with ``seed`` (the same noise on every device);
the same seed gives the same output. When corrupting a data set in batches, give each batch its
own seed (e.g. ``seed + batch_index``) so the batches do not share their noise.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..errors import ConfigError
from ._rng import Rng
from .blur import defocus_blur, glass_blur, motion_blur, zoom_blur
from .digital import brightness, contrast, elastic_transform, jpeg_compression, pixelate
from .noise import gaussian_noise, impulse_noise, shot_noise
from .tables import TABLES, Table
from .weather import fog, frost, snow

__all__ = ["CORRUPTIONS", "GROUPS", "TABLES", "corrupt", "resolve_table"]

Fn = Callable[[torch.Tensor, object, Table, Rng], torch.Tensor]

_FUNCTIONS: dict[str, Fn] = {
    "gaussian_noise": gaussian_noise,
    "shot_noise": shot_noise,
    "impulse_noise": impulse_noise,
    "defocus_blur": defocus_blur,
    "glass_blur": glass_blur,
    "motion_blur": motion_blur,
    "zoom_blur": zoom_blur,
    "snow": snow,
    "frost": frost,
    "fog": fog,
    "brightness": brightness,
    "contrast": contrast,
    "elastic_transform": elastic_transform,
    "pixelate": pixelate,
    "jpeg_compression": jpeg_compression,
}

CORRUPTIONS: tuple[str, ...] = tuple(_FUNCTIONS)

GROUPS: dict[str, tuple[str, ...]] = {
    "noise": CORRUPTIONS[0:3],
    "blur": CORRUPTIONS[3:7],
    "weather": CORRUPTIONS[7:10],
    "digital": CORRUPTIONS[10:15],
}

AUTO_MAX_SIDE = 64


def resolve_table(table: str, height: int, width: int) -> Table:
    """The :class:`Table` named ``table``; ``auto``: cifar up to 64 px, imagenet above."""
    if table == "auto":
        table = "cifar" if max(height, width) <= AUTO_MAX_SIDE else "imagenet"
    if table not in TABLES:
        raise ConfigError("corruption.table", f"unknown table {table!r}; choose auto, cifar or imagenet")
    return TABLES[table]


def _as_float(x: torch.Tensor) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] not in (1, 3):
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ConfigError("corruption.x", f"expected a (N, C, H, W) tensor with C = 1 or 3, got {shape}")
    if x.dtype == torch.uint8:
        return x.float() / 255
    if not x.is_floating_point():
        raise ConfigError("corruption.x", f"expected uint8 or float images, got {x.dtype}")
    xf = x.detach().float()
    if xf.numel() and (xf.min() < 0 or xf.max() > 1):
        raise ConfigError("corruption.x", "float images must be in [0, 1] (uint8 images: 0..255)")
    return xf


def corrupt(x: torch.Tensor, name: str, severity: int, *, seed: int = 0,
            table: str = "auto") -> torch.Tensor:
    """Corrupt a batch with corruption ``name`` at ``severity``.

    x: (N, C, H, W) uint8, or float in [0, 1] (C = 1 or 3) -> float32 (N, C, H, W) in [0, 1] on
    x's device. Severity 0 returns x unchanged (as float); 1..5 as the benchmark. Deterministic
    given ``seed``. ``table``: "auto" (cifar up to 64 px, imagenet above), "cifar" or "imagenet".
    """
    if name not in _FUNCTIONS:
        raise ConfigError("corruption.name",
                          f"unknown corruption {name!r}; choose from {', '.join(CORRUPTIONS)}")
    if isinstance(severity, bool) or not isinstance(severity, int) or not 0 <= severity <= 5:
        raise ConfigError("corruption.severity", f"must be an integer 0..5, got {severity!r}")
    xf = _as_float(x)
    tab = resolve_table(table, xf.shape[-2], xf.shape[-1])
    if severity == 0 or xf.shape[0] == 0:
        return xf.clone()
    with torch.no_grad():
        out = _FUNCTIONS[name](xf, tab.params[name][severity - 1], tab, Rng(seed, xf.device))
    return out.to(torch.float32).contiguous()
