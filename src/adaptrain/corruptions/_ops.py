"""Batched image operations shared by the corruptions, each matching the library call the original
generators use (scipy.ndimage, OpenCV, Pillow, ImageMagick) in its boundary and rounding rules.

Images are float tensors ``(N, C, H, W)``; coordinates are in pixels (row, column).
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F

# ITU-R 601 luma, as OpenCV's RGB2GRAY.
LUMA = (0.299, 0.587, 0.114)


def fold_index(idx: torch.Tensor, n: int, mode: str) -> torch.Tensor:
    """Map integer positions of any range into ``[0, n)`` the way a boundary mode extends an array.

    ``symmetric``: d c b a | a b c d (scipy.ndimage "reflect"); ``reflect101``: d c b | a b c d
    (OpenCV's default border, torch's "reflect"); ``edge``: a a a | a b c d (scipy "nearest",
    ImageMagick's edge virtual pixels).
    """
    if mode == "edge":
        return idx.clamp(0, n - 1)
    if mode == "symmetric":
        r = idx % (2 * n)
        return torch.where(r >= n, 2 * n - 1 - r, r)
    if mode == "reflect101":
        if n == 1:
            return torch.zeros_like(idx)
        r = idx % (2 * n - 2)
        return torch.where(r >= n, 2 * n - 2 - r, r)
    raise ValueError(f"unknown boundary mode {mode!r}")


def pad(x: torch.Tensor, ph: int, pw: int, mode: str) -> torch.Tensor:
    """Pad the last two dims by ``ph`` rows and ``pw`` columns on each side (any size, any mode)."""
    H, W = x.shape[-2:]
    rows = fold_index(torch.arange(-ph, H + ph, device=x.device), H, mode)
    cols = fold_index(torch.arange(-pw, W + pw, device=x.device), W, mode)
    return x.index_select(-2, rows).index_select(-1, cols)


# Above this many non-zero taps a convolution kernel beats shifted adds. (PyTorch's CPU conv2d
# with one input channel and a small kernel is 10-20x slower than adding shifted copies.)
_MAX_SHIFTED_TAPS = 81


def _correlate_padded(xp: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Valid correlation of (M, 1, H + kh - 1, W + kw - 1) with a 2-D kernel -> (M, 1, H, W)."""
    kh, kw = kernel.shape
    h, w = xp.shape[-2] - kh + 1, xp.shape[-1] - kw + 1
    taps = kernel.nonzero().tolist()
    if len(taps) > _MAX_SHIFTED_TAPS:
        return F.conv2d(xp, kernel.to(xp)[None, None])
    out = torch.zeros(*xp.shape[:-2], h, w, dtype=xp.dtype, device=xp.device)
    for i, j in taps:
        out.add_(xp[..., i:i + h, j:j + w], alpha=float(kernel[i, j]))
    return out


def correlate(x: torch.Tensor, kernel: torch.Tensor, mode: str) -> torch.Tensor:
    """Correlate every channel with one odd-sized 2-D ``kernel`` (as cv2.filter2D)."""
    N, C, H, W = x.shape
    kh, kw = kernel.shape
    xp = pad(x.reshape(N * C, 1, H, W), kh // 2, kw // 2, mode)
    return _correlate_padded(xp, kernel).reshape(N, C, H, W)


def correlate_separable(x: torch.Tensor, k_rows: torch.Tensor, k_cols: torch.Tensor,
                        mode: str) -> torch.Tensor:
    """Two 1-D passes: ``k_rows`` along H, then ``k_cols`` along W (odd lengths)."""
    N, C, H, W = x.shape
    y = x.reshape(N * C, 1, H, W)
    if k_rows.numel() > 1:
        y = _correlate_padded(pad(y, k_rows.numel() // 2, 0, mode), k_rows.view(-1, 1))
    if k_cols.numel() > 1:
        y = _correlate_padded(pad(y, 0, k_cols.numel() // 2, mode), k_cols.view(1, -1))
    return y.reshape(N, C, H, W)


def gaussian_kernel(sigma: float, truncate: float) -> torch.Tensor:
    """scipy.ndimage's sampled Gaussian: radius ``int(truncate * sigma + 0.5)``, sum 1."""
    if sigma <= 1e-15:  # scipy skips such axes
        return torch.ones(1, dtype=torch.float64)
    radius = int(truncate * float(sigma) + 0.5)
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 / (float(sigma) ** 2) * t**2)
    return k / k.sum()


def gaussian_filter(x: torch.Tensor, sigma: float | tuple[float, float], truncate: float = 4.0,
                    mode: str = "edge") -> torch.Tensor:
    """Per-channel 2-D Gaussian blur as ``skimage.filters.gaussian`` (default mode "nearest")."""
    sh, sw = (sigma, sigma) if isinstance(sigma, (int, float)) else sigma
    return correlate_separable(x, gaussian_kernel(sh, truncate), gaussian_kernel(sw, truncate), mode)


def cv2_gaussian_kernel(ksize: int, sigma: float) -> torch.Tensor:
    """cv2.getGaussianKernel for sigma > 0."""
    t = torch.arange(ksize, dtype=torch.float64) - (ksize - 1) / 2
    k = torch.exp(-(t**2) / (2 * sigma**2))
    return k / k.sum()


@lru_cache(maxsize=32)
def disk_kernel(radius: float, alias_blur: float) -> torch.Tensor:
    """The anti-aliased disk of defocus blur: a normalised disk on a grid of at least 17x17,
    smoothed by cv2.GaussianBlur (3x3, or 5x5 above radius 8) with OpenCV's reflect-101 border."""
    if radius <= 8:
        half, ksize = 8, 3
    else:
        half, ksize = int(radius), 5
    t = torch.arange(-half, half + 1, dtype=torch.float64)
    disk = ((t[None, :] ** 2 + t[:, None] ** 2) <= radius**2).to(torch.float64)
    disk = disk / disk.sum()
    k = cv2_gaussian_kernel(ksize, alias_blur)
    smooth = correlate_separable(disk[None, None], k, k, "reflect101")[0, 0]
    # Small disks sit in a mostly-zero 17x17 grid; dropping all-zero border rings changes nothing.
    while smooth.shape[0] > 1 and smooth[[0, -1]].abs().sum() + smooth[:, [0, -1]].abs().sum() == 0:
        smooth = smooth[1:-1, 1:-1]
    return smooth.to(torch.float32)


def gather_pixels(x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """``out[n, c, i, j] = x[n, c, rows[n, i, j], cols[n, i, j]]`` for in-range integer indices."""
    N, C, H, W = x.shape
    idx = (rows * W + cols).reshape(N, 1, -1).expand(N, C, -1)
    return x.reshape(N, C, H * W).gather(2, idx).reshape(N, C, *rows.shape[1:])


def sample_bilinear(x: torch.Tensor, ys: torch.Tensor, xs: torch.Tensor, mode: str) -> torch.Tensor:
    """Linear interpolation of ``x`` at per-image source coordinates ``ys, xs`` (N, h, w), with the
    boundary ``mode`` of :func:`fold_index` for neighbours outside the image (scipy
    ``map_coordinates(order=1)``, or cv2.warpAffine's INTER_LINEAR)."""
    H, W = x.shape[-2:]
    y0f, x0f = ys.floor(), xs.floor()
    wy, wx = (ys - y0f).unsqueeze(1).to(x.dtype), (xs - x0f).unsqueeze(1).to(x.dtype)
    y0, x0 = y0f.long(), x0f.long()
    r0, r1 = fold_index(y0, H, mode), fold_index(y0 + 1, H, mode)
    c0, c1 = fold_index(x0, W, mode), fold_index(x0 + 1, W, mode)
    top = gather_pixels(x, r0, c0) * (1 - wx) + gather_pixels(x, r0, c1) * wx
    bottom = gather_pixels(x, r1, c0) * (1 - wx) + gather_pixels(x, r1, c1) * wx
    return top * (1 - wy) + bottom * wy


def motion_blur(x: torch.Tensor, radius: float, sigma: float, angle_deg: torch.Tensor) -> torch.Tensor:
    """ImageMagick's MotionBlurImage, one angle per image (``angle_deg`` (N,), degrees).

    A one-sided Gaussian line kernel: ``width = 2 * ceil(radius) + 1`` taps with weights
    ``exp(-i^2 / (2 sigma^2))`` (normalised), tap ``i`` reading the pixel at offset
    ``ceil(i * (sin a, cos a) - 0.5)`` (rows, columns), edge pixels repeated beyond the border.
    """
    N, C, H, W = x.shape
    width = int(2 * math.ceil(radius) + 1)
    i = torch.arange(width, dtype=torch.float64)
    weights = torch.exp(-(i**2) / (2.0 * sigma * sigma))
    weights = (weights / weights.sum()).tolist()
    a = torch.deg2rad(angle_deg.detach().to("cpu", torch.float64))
    # Same float64 expression as ImageMagick: i * (width sin a) / hypot(width sin a, width cos a).
    py, px = width * torch.sin(a), width * torch.cos(a)
    hyp = torch.hypot(py, px)
    dy = torch.ceil(i[None, :] * py[:, None] / hyp[:, None] - 0.5).long().to(x.device)  # (N, width)
    dx = torch.ceil(i[None, :] * px[:, None] / hyp[:, None] - 0.5).long().to(x.device)
    rows = (torch.arange(H, device=x.device)[None, None, :] + dy[:, :, None]).clamp(0, H - 1)
    cols = (torch.arange(W, device=x.device)[None, None, :] + dx[:, :, None]).clamp(0, W - 1)
    out = torch.zeros_like(x)
    for k in range(width):  # one batched gather per tap (at most 41)
        r = rows[:, k, :, None].expand(N, H, W)
        c = cols[:, k, None, :].expand(N, H, W)
        out += weights[k] * gather_pixels(x, r, c)
    return out


def zoom_center(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Zoom into the centre by ``factor`` >= 1 without trimming (the clipped_zoom of both
    generators before their trim): crop ``ceil(side / factor)`` around the centre and rescale it
    with scipy.ndimage.zoom(order=1), i.e. bilinear with corners aligned, to ``round(crop * factor)``.
    """
    H, W = x.shape[-2:]
    ch, cw = math.ceil(H / factor), math.ceil(W / factor)
    top, left = (H - ch) // 2, (W - cw) // 2
    crop = x[..., top:top + ch, left:left + cw]
    size = (int(round(ch * factor)), int(round(cw * factor)))
    if size == (ch, cw):
        return crop
    return F.interpolate(crop, size=size, mode="bilinear", align_corners=True)


def trim(x: torch.Tensor, height: int, width: int, how: str) -> torch.Tensor:
    """Cut an (..., h, w) array to height x width: around its centre or at its top-left corner."""
    if how == "corner":
        return x[..., :height, :width]
    t, left = (x.shape[-2] - height) // 2, (x.shape[-1] - width) // 2
    return x[..., t:t + height, left:left + width]


def _box(t: float) -> float:
    return 1.0 if -0.5 < t <= 0.5 else 0.0


@lru_cache(maxsize=64)
def pil_box_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """Pillow's BOX resampling along one axis as an (n_out, n_in) matrix (Resample.c's
    precompute_coeffs: support 0.5 * max(scale, 1), taps normalised to sum 1)."""
    scale = n_in / n_out
    filterscale = max(scale, 1.0)
    support = 0.5 * filterscale
    m = torch.zeros(n_out, n_in, dtype=torch.float64)
    for o in range(n_out):
        center = (o + 0.5) * scale
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), n_in)
        for i in range(lo, hi):
            m[o, i] = _box((i - center + 0.5) / filterscale)
        total = m[o].sum()
        if total > 0:
            m[o] /= total
    return m


def pil_box_resize(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    H, W = x.shape[-2:]
    mh = pil_box_matrix(H, h).to(x)
    mw = pil_box_matrix(W, w).to(x)
    return mh @ x @ mw.T


def pil_nearest_resize(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Pillow's NEAREST resize: output pixel o reads input ``floor((o + 0.5) * n_in / n_out)``."""
    H, W = x.shape[-2:]
    rows = ((torch.arange(h, dtype=torch.float64) + 0.5) * (H / h)).floor().long().clamp(max=H - 1)
    cols = ((torch.arange(w, dtype=torch.float64) + 0.5) * (W / w)).floor().long().clamp(max=W - 1)
    return x.index_select(-2, rows.to(x.device)).index_select(-1, cols.to(x.device))


def luma(x: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) grey of an RGB batch; a 1-channel batch is its own grey."""
    if x.shape[1] == 1:
        return x
    r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    return LUMA[0] * r + LUMA[1] * g + LUMA[2] * b
