"""Model registry: every architecture takes [0, 1] images and normalises inside.

``build_model({"name": "wrn", "depth": 28}, spec)`` builds a registered architecture for the
data set described by ``spec`` (an :class:`adaptrain.data.base.DataSpec`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..autoload import import_submodules
from .base import MODELS, ImageClassifier, first_nonfinite

import_submodules(__name__, __path__)  # every module registers its architectures

if TYPE_CHECKING:
    from ..data.base import DataSpec


def build_model(section: dict[str, Any], spec: DataSpec) -> ImageClassifier:
    """Build the model named in ``section`` (the ``model:`` config) for the data in ``spec``."""
    model = MODELS.build(
        section,
        num_classes=spec.num_classes,
        in_channels=spec.in_channels,
        image_size=tuple(spec.image_size),
        mean=tuple(spec.mean),
        std=tuple(spec.std),
    )
    if not isinstance(model, ImageClassifier):
        raise TypeError(f"model {section.get('name')!r} is not an ImageClassifier")
    return model


__all__ = ["MODELS", "ImageClassifier", "build_model", "first_nonfinite"]
