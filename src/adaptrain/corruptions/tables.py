"""The two constant tables: CIFAR-10-C (32x32 calibration) and ImageNet-C as in ``imagecorruptions``.

``cifar``: the constants of Hendrycks & Dietterich's ``make_cifar_c.py`` (the generator of the
published CIFAR-10-C), calibrated for 32x32 images. ``imagenet``: the constants of the PyPI package
``imagecorruptions`` 1.1.2 (ImageNet-C's constants, generalised by that package to any image size).

Besides constants, the two generators differ in a few algorithmic details; each :class:`Table`
records those choices so that the corruption code stays one function per corruption.
Each entry of ``params`` lists the parameters of severities 1..5.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Table:
    name: str
    params: dict[str, tuple[Any, ...]] = field(repr=False)
    # clipped zoom (zoom_blur, snow): "center" trims the zoomed crop around its centre
    # (make_cifar_c.py); "corner" keeps its top-left corner (imagecorruptions).
    zoom_trim: str
    # elastic_transform: "affine+elastic" (random affine, then a smooth displacement field with
    # size-relative constants; make_cifar_c.py) or "elastic" (displacement field only).
    elastic: str
    # frost texture scaling: "cifar" (shrink the photos by 0.2 for a 32 px image) or "fit"
    # (scale them to cover the image, times 1.1; imagecorruptions).
    frost_scale: str
    # snow: make_cifar_c.py passes the snow layer through ImageMagick as an 8-bit image, which
    # truncates it before and after the blur ("imagemagick"); imagecorruptions rounds it after
    # its own blur ("round").
    snow_8bit: str


CIFAR = Table(
    name="cifar",
    params={
        "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),  # std
        "shot_noise": (500, 250, 100, 75, 50),  # photons per unit intensity
        "impulse_noise": (0.01, 0.02, 0.03, 0.05, 0.07),  # fraction of values replaced
        # (disk radius, anti-alias sigma)
        "defocus_blur": ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)),
        # (gaussian sigma, max displacement, iterations)
        "glass_blur": ((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)),
        "motion_blur": ((6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)),  # (radius, sigma)
        # zoom factors as numpy.arange(start, stop, step)
        "zoom_blur": ((1, 1.06, 0.01), (1, 1.11, 0.01), (1, 1.16, 0.01), (1, 1.21, 0.01),
                      (1, 1.26, 0.01)),
        # (mean, std, zoom, threshold, blur radius, blur sigma, image weight)
        "snow": ((0.1, 0.2, 1, 0.6, 8, 3, 0.95), (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
                 (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9), (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
                 (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8)),
        "frost": ((1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)),  # (image, frost)
        "fog": ((0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)),  # (strength, decay)
        "brightness": (0.05, 0.1, 0.15, 0.2, 0.3),  # added to HSV value
        "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),  # factor around the channel mean
        # (alpha, sigma, affine jitter) as fractions of the image side (32 in the original)
        "elastic_transform": ((0, 0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06),
                              (0.1, 0.04, 0.05), (0.1, 0.03, 0.03)),
        "pixelate": (0.95, 0.9, 0.85, 0.75, 0.65),  # downscale factor
        "jpeg_compression": (80, 65, 58, 50, 40),  # quality
    },
    zoom_trim="center",
    elastic="affine+elastic",
    frost_scale="cifar",
    snow_8bit="imagemagick",
)

IMAGENET = Table(
    name="imagenet",
    params={
        "gaussian_noise": (0.08, 0.12, 0.18, 0.26, 0.38),
        "shot_noise": (60, 25, 12, 5, 3),
        "impulse_noise": (0.03, 0.06, 0.09, 0.17, 0.27),
        "defocus_blur": ((3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)),
        "glass_blur": ((0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2)),
        "motion_blur": ((10, 3), (15, 5), (15, 8), (15, 12), (20, 15)),
        "zoom_blur": ((1, 1.11, 0.01), (1, 1.16, 0.01), (1, 1.21, 0.02), (1, 1.26, 0.02),
                      (1, 1.31, 0.03)),
        "snow": ((0.1, 0.3, 3, 0.5, 10, 4, 0.8), (0.2, 0.3, 2, 0.5, 12, 4, 0.7),
                 (0.55, 0.3, 4, 0.9, 12, 8, 0.7), (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65),
                 (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55)),
        "frost": ((1, 0.4), (0.8, 0.6), (0.7, 0.7), (0.65, 0.7), (0.6, 0.75)),
        "fog": ((1.5, 2), (2.0, 2), (2.5, 1.7), (2.5, 1.5), (3.0, 1.4)),
        "brightness": (0.1, 0.2, 0.3, 0.4, 0.5),
        "contrast": (0.4, 0.3, 0.2, 0.1, 0.05),
        # alpha; sigma is 1% of each side and the raw displacement at most 0.5% of the height
        "elastic_transform": (250 * 0.05, 250 * 0.065, 250 * 0.085, 250 * 0.1, 250 * 0.12),
        "pixelate": (0.6, 0.5, 0.4, 0.3, 0.25),
        "jpeg_compression": (25, 18, 15, 10, 7),
    },
    zoom_trim="corner",
    elastic="elastic",
    frost_scale="fit",
    snow_8bit="round",
)

TABLES: dict[str, Table] = {"cifar": CIFAR, "imagenet": IMAGENET}
