"""Weather corruptions: snow, frost and fog."""

from __future__ import annotations

import torch

from ._ops import luma, motion_blur, trim, zoom_center
from ._rng import Rng
from .tables import Table
from .textures import textures


def snow(x: torch.Tensor, p: tuple[float, ...], table: Table, rng: Rng) -> torch.Tensor:
    """Snow flakes (a thresholded, zoomed Gaussian field streaked by motion blur, added along with
    its 180-degree rotation) over an image whitened towards ``1.5 * grey + 0.5``."""
    mean, std, zoom, threshold, radius, sigma, keep = p
    N, C, H, W = x.shape
    layer = rng.normal((N, 1, H, W), mean, std)
    layer = zoom_center(layer, zoom)
    if table.zoom_trim == "center":  # make_cifar_c.py trims before the blur,
        layer = trim(layer, H, W, "center")
    layer = torch.where(layer < threshold, torch.zeros_like(layer), layer).clamp(0, 1)
    angle = rng.uniform((N,), -135.0, -45.0, dtype=torch.float64)
    if table.snow_8bit == "imagemagick":  # ... and blurs an 8-bit image into an 8-bit image
        layer = torch.floor(layer * 255) / 255
        # (+1e-4: a flat 255 region must stay 255 despite float rounding of the weights)
        layer = torch.floor(motion_blur(layer, radius, sigma, angle) * 255 + 1e-4) / 255
    else:
        layer = torch.round(motion_blur(layer, radius, sigma, angle) * 255) / 255
    layer = trim(layer, H, W, "corner")  # imagecorruptions blurs the untrimmed layer
    x = keep * x + (1 - keep) * torch.maximum(x, luma(x) * 1.5 + 0.5)
    return (x + layer + layer.flip(-2, -1)).clamp(0, 1)


def frost(x: torch.Tensor, p: tuple[float, float], table: Table, rng: Rng) -> torch.Tensor:
    """``clip(a * x + b * crop)`` with a random crop of one of five frost photos (its grey for a
    1-channel image)."""
    a, b = p
    N, C, H, W = x.shape
    texs = textures(table.frost_scale, H, W)
    which = rng.randint((N,), 0, len(texs)).cpu()
    sizes = torch.tensor([t.shape[-2:] for t in texs])[which]  # (N, 2)
    top = rng.below(sizes[:, 0] - H).cpu()
    left = rng.below(sizes[:, 1] - W).cpu()
    crops = torch.empty(N, 3, H, W)
    ar_h, ar_w = torch.arange(H), torch.arange(W)
    for k, tex in enumerate(texs):  # one batched crop per texture
        sel = (which == k).nonzero().flatten()
        if sel.numel():
            rows = (top[sel, None] + ar_h)[:, :, None]
            cols = (left[sel, None] + ar_w)[:, None, :]
            crops[sel] = tex[:, rows, cols].permute(1, 0, 2, 3)
    crops = crops.to(x.device)
    if C == 1:
        crops = luma(crops)
    return (a * x + b * crops / 255).clamp(0, 1)


def plasma_fractal(n: int, size: int, decay: float, rng: Rng) -> torch.Tensor:
    """(n, size, size) float64 diamond-square height maps in [0, 1] (size a power of two), the
    generators' plasma_fractal with every image's map made in the same pass."""
    m = torch.zeros(n, size, size, dtype=torch.float64, device=rng.device)
    step, wibble = size, 100.0

    def wibbled(a: torch.Tensor) -> torch.Tensor:
        return a / 4 + wibble * rng.uniform(tuple(a.shape), -wibble, wibble, dtype=torch.float64)

    while step >= 2:
        half = step // 2
        corners = m[:, 0::step, 0::step]
        acc = corners + corners.roll(-1, 1)
        acc = acc + acc.roll(-1, 2)
        m[:, half::step, half::step] = wibbled(acc)
        centres = m[:, half::step, half::step]
        corners = m[:, 0::step, 0::step]
        m[:, 0::step, half::step] = wibbled(
            (centres + centres.roll(1, 1)) + (corners + corners.roll(-1, 2)))
        m[:, half::step, 0::step] = wibbled(
            (centres + centres.roll(1, 2)) + (corners + corners.roll(-1, 1)))
        step = half
        wibble /= decay
    m -= m.amin(dim=(1, 2), keepdim=True)
    return m / m.amax(dim=(1, 2), keepdim=True)


def fog(x: torch.Tensor, p: tuple[float, float], table: Table, rng: Rng) -> torch.Tensor:
    """``clip((x + s * plasma) * max / (max + s))`` with a plasma fractal of side the next power of
    two of the image side and ``max`` the clean image's maximum."""
    strength, decay = p
    N, C, H, W = x.shape
    size = 1 << (max(H, W) - 1).bit_length()
    plasma = plasma_fractal(N, size, decay, rng)[:, None, :H, :W].to(x.dtype)
    top = x.amax(dim=(1, 2, 3), keepdim=True)
    return ((x + strength * plasma) * top / (top + strength)).clamp(0, 1)
