"""The frost photographs, read from the installed ``imagecorruptions`` package's data files.

The package is located with ``importlib.util.find_spec`` and never imported (its own imports
fail with current NumPy / setuptools, and only the image files are needed). The textures are not
part of adaptrain: ``pip install "adaptrain[corruptions]"`` brings them.
"""

from __future__ import annotations

import importlib.util
import math
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import DataError
from ._ops import sample_bilinear

# Both generators draw randint(5) over this list, so frost6.jpg is never used.
FILES = ("frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg", "frost6.jpg")
USED = 5

INSTALL_HINT = ('frost needs the texture photos of the imagecorruptions package: '
                'pip install "adaptrain[corruptions]"')


def texture_dir() -> Path:
    spec = importlib.util.find_spec("imagecorruptions")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("corruption.frost", INSTALL_HINT)
    folder = Path(next(iter(spec.submodule_search_locations))) / "frost"
    if not all((folder / f).is_file() for f in FILES[:USED]):
        raise DataError("corruption.frost", f"{INSTALL_HINT} (no textures in {folder})")
    return folder


@lru_cache(maxsize=USED)
def _photo(name: str) -> torch.Tensor:
    """(3, h, w) float32 RGB in [0, 255] (an alpha channel is dropped, as cv2.imread does)."""
    with Image.open(texture_dir() / name) as im:
        rgb = np.asarray(im.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(rgb.copy()).permute(2, 0, 1).float()


def _resize_linear(t: torch.Tensor, h: int, w: int, fy: float, fx: float) -> torch.Tensor:
    """cv2.resize(INTER_LINEAR) with scale factors given: source = (o + 0.5) / f - 0.5, clamped."""
    ys = ((torch.arange(h, dtype=torch.float64) + 0.5) / fy - 0.5).clamp(0, t.shape[-2] - 1)
    xs = ((torch.arange(w, dtype=torch.float64) + 0.5) / fx - 0.5).clamp(0, t.shape[-1] - 1)
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return sample_bilinear(t[None].double(), grid_y[None], grid_x[None], "edge")[0].float()


@lru_cache(maxsize=8)
def textures(scaling: str, height: int, width: int) -> tuple[torch.Tensor, ...]:
    """The five frost textures scaled for an H x W image, as uint8-valued float32 (3, fh, fw).

    ``cifar``: make_cifar_c.py shrinks every photo by 0.2 (cv2 INTER_LINEAR) for 32 px images;
    for other sizes the factor scales with the image, ``0.2 * max(H, W) / 32``.
    ``fit``: imagecorruptions scales a photo up only when it is smaller than the image, then by
    1.1 in any case (cv2 INTER_CUBIC), to ``ceil(side * factor)``.
    """
    H, W = height, width
    out = []
    for name in FILES[:USED]:
        photo = _photo(name)
        fh, fw = photo.shape[-2:]
        if scaling == "cifar":
            f = 0.2 * max(H, W) / 32
            # cv2 rounds the output size to nearest; samples at (o + 0.5) / f - 0.5
            size = (int(round(fh * f)), int(round(fw * f)))
            t = _resize_linear(photo, *size, f, f)
        else:
            f = max(1.0, H / fh, W / fw) * 1.1
            size = (math.ceil(fh * f), math.ceil(fw * f))
            t = torch.nn.functional.interpolate(photo[None], size=size, mode="bicubic",
                                                align_corners=False)[0]
        t = t.round().clamp(0, 255)  # cv2.resize of a uint8 image rounds and saturates
        if t.shape[-2] <= H or t.shape[-1] <= W:
            raise DataError("corruption.frost", f"frost texture {name} too small for {H}x{W} images")
        out.append(t.contiguous())
    return tuple(out)
