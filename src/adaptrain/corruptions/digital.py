"""Digital corruptions (and elastic): brightness, contrast, elastic transform, pixelate, JPEG."""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

from ._ops import gaussian_filter, pil_box_resize, pil_nearest_resize, sample_bilinear
from ._rng import Rng
from .tables import Table


def brightness(x: torch.Tensor, c: float, table: Table, rng: Rng) -> torch.Tensor:
    """Add ``c`` to the HSV value (clipped) and convert back to RGB.

    Hue and saturation are kept, and every RGB channel is linear in V for fixed H and S, so the
    round trip through HSV is exactly ``rgb * V' / V`` (and ``V'`` for black pixels, whose S = 0).
    """
    if x.shape[1] == 1:
        return (x + c).clamp(0, 1)
    v = x.amax(dim=1, keepdim=True)
    v_new = (v + c).clamp(0, 1)
    scaled = x * (v_new / v.clamp_min(1e-12))
    return torch.where(v > 0, scaled, v_new.expand_as(x)).clamp(0, 1)


def contrast(x: torch.Tensor, c: float, table: Table, rng: Rng) -> torch.Tensor:
    """Scale every channel's deviation from its own mean by ``c``."""
    means = x.mean(dim=(2, 3), keepdim=True)
    return ((x - means) * c + means).clamp(0, 1)


def _random_affine(x: torch.Tensor, jitter: float, rng: Rng) -> torch.Tensor:
    """make_cifar_c.py's random affine: three points around the centre moved by U(-jitter,
    jitter), the affine map between them (cv2.getAffineTransform) applied with cv2.warpAffine
    (bilinear, reflect-101 border). Source coordinates are exact, as in OpenCV >= 4.11; older
    OpenCV rounded them to 1/32 pixel."""
    N, C, H, W = x.shape
    cx, cy, s = float(W // 2), float(H // 2), float(min(H, W) // 3)
    # points as (x, y) = (column, row), the OpenCV convention
    pts1 = torch.tensor([[cx + s, cy + s], [cx + s, cy - s], [cx - s, cy - s]])
    pts2 = pts1 + rng.uniform((N, 3, 2), -jitter, jitter).cpu()  # float32, as the original
    A = torch.cat([pts1, torch.ones(3, 1)], dim=1).double()
    M = torch.linalg.solve(A, pts2.double()).transpose(1, 2)  # (N, 2, 3): pts2 = M @ [pts1; 1]
    inv = torch.linalg.inv(M[:, :, :2])
    shift = -(inv @ M[:, :, 2:])  # (N, 2, 1)
    ys, xs = torch.meshgrid(torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64),
                            indexing="ij")
    grid = torch.stack([xs.reshape(-1), ys.reshape(-1)])  # (2, H*W)
    src = inv @ grid + shift  # (N, 2, H*W): source (x, y) of every output pixel
    sx = src[:, 0].reshape(N, H, W).to(x.device)
    sy = src[:, 1].reshape(N, H, W).to(x.device)
    return sample_bilinear(x, sy, sx, "reflect101")


def elastic_transform(x: torch.Tensor, p, table: Table, rng: Rng) -> torch.Tensor:
    """Resample the image along a smooth random displacement field (scipy map_coordinates,
    order 1, mode "reflect"); make_cifar_c.py applies a random affine first.

    Fields: ``alpha * gaussian(U(-m, m), sigma, truncate=3, mode="reflect")`` for rows and columns.
    ``cifar``: ``(alpha, sigma, jitter) = p * side`` (side 32 in the original; here the shorter
    side), m = 1. ``imagenet``: alpha = p, sigma = 1% of each side, m = 0.5% of the height.
    """
    N, C, H, W = x.shape
    if table.elastic == "affine+elastic":
        side = min(H, W)
        alpha, sigma, jitter = (float(f) * side for f in p)
        x = _random_affine(x, jitter, rng)
        limit, sigmas = 1.0, (sigma, sigma)
    else:
        alpha, limit, sigmas = float(p), H * 0.005, (H * 0.01, W * 0.01)
    fields = []
    for _ in range(2):  # columns (dx) first, then rows (dy), as drawn in the original
        raw = rng.uniform((N, 1, H, W), -limit, limit)
        fields.append(gaussian_filter(raw, sigmas, truncate=3.0, mode="symmetric")[:, 0] * alpha)
    dx, dy = fields
    rows = torch.arange(H, device=x.device, dtype=x.dtype).view(1, H, 1)
    cols = torch.arange(W, device=x.device, dtype=x.dtype).view(1, 1, W)
    return sample_bilinear(x, rows + dy, cols + dx, "symmetric").clamp(0, 1)


def pixelate(x: torch.Tensor, c: float, table: Table, rng: Rng) -> torch.Tensor:
    """Pillow BOX downscale by ``c`` (to ``int(side * c)``), then back to full size.

    make_cifar_c.py scales back up with BOX, imagecorruptions with NEAREST: when enlarging, a
    Pillow box filter covers exactly one source pixel, the nearest, so both are the same
    (checked for every side 8..299 and every factor of both tables)."""
    H, W = x.shape[-2:]
    small = pil_box_resize(x, int(H * c), int(W * c))
    return pil_nearest_resize(small, H, W).clamp(0, 1)


def jpeg_compression(x: torch.Tensor, quality: int, table: Table, rng: Rng) -> torch.Tensor:
    """A real JPEG round trip through Pillow at ``quality`` (its default 4:2:0 subsampling), one
    image at a time; the input is rounded to 8 bits first. 1-channel images are coded as
    greyscale JPEGs."""
    N, C, H, W = x.shape
    pixels = (x * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    out = np.empty_like(pixels)
    for i in range(N):  # the codec has no batched form
        buf = io.BytesIO()
        Image.fromarray(pixels[i] if C == 3 else pixels[i, :, :, 0]).save(buf, format="JPEG",
                                                                            quality=int(quality))
        buf.seek(0)
        with Image.open(buf) as decoded:
            out[i] = np.asarray(decoded).reshape(H, W, C)
    return torch.from_numpy(out).permute(0, 3, 1, 2).to(x.device, torch.float32) / 255
