"""Load the PyPI package ``imagecorruptions`` 1.1.2 as the reference for tests/test_corruptions.py.

The package predates NumPy 2, scikit-image 0.19 and setuptools 81, and fails with them in three
places; this shim repairs those without touching the installed files or the global modules:

- ``from pkg_resources import resource_filename`` (gone from setuptools >= 81): a stand-in module
  is put into ``sys.modules`` only for the duration of the import, then removed again;
- ``np.float_`` (removed in NumPy 2, used by ``plasma_fractal`` -> ``fog``): the module's ``np``
  global is replaced by a proxy of NumPy that also has ``float_``;
- ``skimage.filters.gaussian(..., multichannel=True)`` (removed in scikit-image 0.19, used by
  ``glass_blur`` and ``gaussian_blur``): the module's ``gaussian`` global is replaced by a wrapper
  that maps ``multichannel`` to ``channel_axis=-1``.

The proxy's ``random`` attribute can be swapped (:func:`replay`) so that the reference draws the
very numbers our implementation drew, which makes the random corruptions comparable exactly.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import sys
import types
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy


class _NumpyProxy(types.ModuleType):
    """NumPy with ``float_`` restored and a replaceable ``random``."""

    def __init__(self) -> None:
        super().__init__("numpy")
        self.float_ = numpy.float64
        self.random = numpy.random

    def __getattr__(self, name: str) -> Any:  # only called for names not set above
        return getattr(numpy, name)


def _gaussian_wrapper(gaussian):
    def wrapped(image, sigma=1, *args, multichannel=None, **kwargs):
        if multichannel:
            kwargs["channel_axis"] = -1
        return gaussian(image, sigma, *args, **kwargs)

    return wrapped


def _pkg_resources_stand_in() -> types.ModuleType:
    mod = types.ModuleType("pkg_resources")

    def resource_filename(package: str, name: str) -> str:
        spec = importlib.util.find_spec(package)
        return str(Path(spec.origin).parent / name)

    mod.resource_filename = resource_filename
    return mod


_cached: types.ModuleType | None = None
_failure: str | None = None


def load() -> types.ModuleType | None:
    """The repaired ``imagecorruptions.corruptions`` module, or None (see :func:`why_missing`)."""
    global _cached, _failure
    if _cached is not None or _failure is not None:
        return _cached
    if importlib.util.find_spec("imagecorruptions") is None:
        _failure = 'imagecorruptions is not installed (pip install -e ".[dev]")'
        return None
    added = False
    try:
        import pkg_resources  # noqa: F401
    except ImportError:
        sys.modules["pkg_resources"] = _pkg_resources_stand_in()
        added = True
    try:
        with warnings.catch_warnings():  # its scipy.ndimage.interpolation import is deprecated
            warnings.simplefilter("ignore", DeprecationWarning)
            module = importlib.import_module("imagecorruptions.corruptions")
    except ImportError as e:  # e.g. cv2 without libGL.so.1 on a bare machine
        _failure = f"imagecorruptions does not import: {e}"
        return None
    finally:
        if added:
            del sys.modules["pkg_resources"]
    module.np = _NumpyProxy()
    module.gaussian = _gaussian_wrapper(module.gaussian)
    _cached = module
    return module


def why_missing() -> str:
    load()
    return _failure or ""


class Replay:
    """A stand-in for ``numpy.random`` that returns prepared values, in call order.

    Each entry is ``(method, value)``; a call to another method than the next entry's fails the
    test, so a reference that draws in a different order or with other shapes is caught.
    """

    def __init__(self, entries: list[tuple[str, Any]]) -> None:
        self.entries = list(entries)

    def _next(self, method: str, size=None):
        assert self.entries, f"reference drew more than recorded (np.random.{method})"
        name, value = self.entries.pop(0)
        assert name == method, f"reference called np.random.{method}, expected {name}"
        value = numpy.asarray(value)
        if size is not None:
            want = (size,) if isinstance(size, int) else tuple(size)
            assert value.shape == want, f"np.random.{method}: size {want}, recorded {value.shape}"
        return value if value.ndim else value.item()

    def normal(self, loc=0.0, scale=1.0, size=None):
        return self._next("normal", size)

    def uniform(self, low=0.0, high=1.0, size=None):
        return self._next("uniform", size)

    def randint(self, low, high=None, size=None):
        return self._next("randint", size)

    def poisson(self, lam=1.0, size=None):
        value = self._next("poisson", size)
        assert numpy.shape(value) == numpy.shape(lam)
        return value


@contextlib.contextmanager
def replay(module: types.ModuleType, entries: list[tuple[str, Any]]) -> Iterator[Replay]:
    """Within the block, ``module``'s ``np.random`` returns ``entries``; all must be used."""
    fake = Replay(entries)
    module.np.random = fake
    try:
        yield fake
    finally:
        module.np.random = numpy.random
    assert not fake.entries, f"reference left {len(fake.entries)} recorded draws unused"
