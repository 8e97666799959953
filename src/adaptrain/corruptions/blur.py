"""Blur corruptions: defocus, glass, motion and zoom blur."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from ._ops import correlate, disk_kernel, gaussian_filter, trim, zoom_center
from ._ops import motion_blur as _motion
from ._rng import Rng
from .tables import Table


def defocus_blur(x: torch.Tensor, p: tuple[float, float], table: Table, rng: Rng) -> torch.Tensor:
    """Correlation with an anti-aliased disk of radius ``p[0]`` (OpenCV's reflect-101 border)."""
    radius, alias_blur = p
    return correlate(x, disk_kernel(float(radius), float(alias_blur)), "reflect101").clamp(0, 1)


@lru_cache(maxsize=16)
def wavefronts(height: int, width: int, d: int,
               device: torch.device | None = None) -> tuple[torch.Tensor, ...]:
    """The glass-blur positions (flat indices, on ``device``) grouped into steps that can run at
    once, in execution order.

    The original visits rows ``H-d .. d+1`` (descending) and within each row columns ``W-d .. d+1``,
    and sets pixel p to the current value of ``p + o`` with ``o`` in ``[-d, d-1]^2``. Two visits
    can interact only if their positions differ by at most d in both coordinates. Giving position
    (h, w) the time ``(d + 1) * (H - d - h) + (W - d - w)`` keeps the original order of every such
    pair, and positions with equal time are at least d + 1 columns apart, so each group is one
    parallel gather and the result equals the sequential loop exactly.
    """
    H, W = height, width
    hs = torch.arange(H - d, d, -1)
    ws = torch.arange(W - d, d, -1)
    if hs.numel() == 0 or ws.numel() == 0:
        return ()
    h, w = torch.meshgrid(hs, ws, indexing="ij")
    h, w = h.reshape(-1), w.reshape(-1)
    t = (d + 1) * (H - d - h) + (W - d - w)
    order = torch.argsort(t, stable=True)
    pos = (h * W + w)[order]
    counts = torch.bincount(t[order]).tolist()
    return tuple(g.to(device) for g in torch.split(pos, counts) if g.numel())


def _shuffle(y: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor, d: int) -> torch.Tensor:
    N, C, H, W = y.shape
    flat = y.reshape(N, C, H * W).clone()
    rows = torch.arange(H, device=y.device).view(1, H, 1)
    cols = torch.arange(W, device=y.device).view(1, 1, W)
    src = ((rows + dy) * W + (cols + dx)).reshape(N, H * W)  # source of every position
    for pos in wavefronts(H, W, d, y.device):
        idx = src[:, pos].unsqueeze(1).expand(N, C, pos.numel())
        flat.index_copy_(2, pos, flat.gather(2, idx))
    return flat.reshape(N, C, H, W)


def glass_blur(x: torch.Tensor, p: tuple[float, int, int], table: Table, rng: Rng) -> torch.Tensor:
    """Gaussian blur, local pixel shuffling, Gaussian blur again.

    The original's shuffle is ``x[h, w], x[h', w'] = x[h', w'], x[h, w]`` on an (H, W, 3) array:
    both right-hand sides are views, so it copies ``x[h', w']`` to ``x[h, w]`` and leaves
    ``x[h', w']`` as it was; the published data sets were made that way, and so is this. Between
    the blurs the image is truncated to 8 bits (``np.uint8(... * 255)``), as there.
    """
    sigma, d, iters = p
    N, C, H, W = x.shape
    y = torch.floor(gaussian_filter(x, sigma) * 255) / 255
    # (dx, dy) for every position and iteration: np.random.randint(-d, d, size=2) in the original
    offsets = rng.randint((iters, N, 2, H, W), -d, d)
    for it in range(iters):
        y = _shuffle(y, offsets[it, :, 0], offsets[it, :, 1], d)
    return gaussian_filter(y, sigma).clamp(0, 1)


def motion_blur(x: torch.Tensor, p: tuple[float, float], table: Table, rng: Rng) -> torch.Tensor:
    """ImageMagick's motion blur (radius, sigma) at a uniform random angle in [-45, 45] degrees."""
    radius, sigma = p
    angle = rng.uniform((x.shape[0],), -45.0, 45.0, dtype=torch.float64)
    return _motion(x, radius, sigma, angle).clamp(0, 1)


def zoom_factors(spec: tuple[float, float, float]) -> list[float]:
    """The zoom factors ``numpy.arange(start, stop, step)`` of the original (float rounding and all:
    ``arange(1, 1.06, 0.01)`` has 7 entries)."""
    return [float(z) for z in np.arange(*spec)]


def zoom_blur(x: torch.Tensor, spec: tuple[float, float, float], table: Table, rng: Rng) -> torch.Tensor:
    """The mean of the image and its centre zooms by every factor of ``spec``."""
    H, W = x.shape[-2:]
    factors = zoom_factors(spec)
    out = x.clone()
    for z in factors:
        out += trim(zoom_center(x, z), H, W, table.zoom_trim)
    return (out / (len(factors) + 1)).clamp(0, 1)
