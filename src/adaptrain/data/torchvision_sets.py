"""CIFAR-10, CIFAR-100, SVHN and MNIST through torchvision, cached under ``data.root``.

The files are first looked for without downloading; only if they are missing (and
``download`` is allowed) does torchvision download them, with a socket timeout so that an
offline machine fails within seconds. Any failure becomes one DataError naming ``data.root``.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import DataError
from .base import DATASETS, DataArrays, DataSpec

DOWNLOAD_TIMEOUT = 10.0  # seconds without an answer before a download attempt gives up

# Per-channel statistics of the training images on [0, 1] (population std over all pixels).
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
SVHN_MEAN, SVHN_STD = (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)
MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)


@contextlib.contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    if not text.startswith(type(exc).__name__):
        text = f"{type(exc).__name__}: {text}"
    return text if len(text) <= 120 else text[:117] + "..."


def _open(
    title: str,
    name: str,
    expected: str,
    root: Path,
    download: bool,
    make: Callable[[str, bool, bool], Any],
) -> tuple[Any, Any]:
    """Both splits as torchvision datasets: ``make(root, train, download)``.

    Raises DataError naming data.root, with what to do, when the files are missing and
    cannot be downloaded.
    """
    try:
        return make(str(root), True, False), make(str(root), False, False)
    except Exception as exc:
        missing = isinstance(exc, RuntimeError) and "not found" in str(exc)
        problem = "" if missing else f" ({_short(exc)})"
    if not download:
        problem = f" and download is disabled{problem}"
    else:
        try:
            with _socket_timeout(DOWNLOAD_TIMEOUT):
                return make(str(root), True, True), make(str(root), False, True)
        except Exception as exc:
            problem = f" and download failed ({_short(exc)})"
    raise DataError(
        "data.root",
        f"{title} not found under {root}{problem}: on a machine with internet run "
        f"`adaptrain train ... data.name={name} data.root=DIR` once to download, "
        f"or place {expected} in DIR, "
        f"or use data.name=imagefolder data.root=DIR for an ImageFolder copy",
    )


def _images(data: Any, layout: str) -> torch.Tensor:
    """uint8 (N, C, H, W) from torchvision's stored arrays ('nhwc', 'nchw' or 'nhw')."""
    x = torch.as_tensor(np.asarray(data), dtype=torch.uint8)
    if layout == "nhwc":
        x = x.permute(0, 3, 1, 2)
    elif layout == "nhw":
        x = x.unsqueeze(1)
    return x.contiguous()


def _labels(values: Any) -> torch.Tensor:
    return torch.as_tensor(np.asarray(values), dtype=torch.int64).reshape(-1)


def _arrays(
    name: str,
    train: Any,
    test: Any,
    layout: str,
    classes: tuple[str, ...],
    mean: tuple[float, ...],
    std: tuple[float, ...],
    label_attr: str = "targets",
) -> DataArrays:
    x_train, x_test = _images(train.data, layout), _images(test.data, layout)
    spec = DataSpec(
        name=name,
        num_classes=len(classes),
        in_channels=int(x_train.shape[1]),
        image_size=(int(x_train.shape[2]), int(x_train.shape[3])),
        mean=mean,
        std=std,
        class_names=classes,
    )
    y_train = _labels(getattr(train, label_attr))
    y_test = _labels(getattr(test, label_attr))
    return DataArrays(spec, x_train, y_train, x_test, y_test)


@DATASETS.register("cifar10")
def cifar10(root: Path, download: bool = True) -> DataArrays:
    """CIFAR-10 (50,000 / 10,000 RGB 32x32 images, 10 classes), via torchvision."""
    from torchvision.datasets import CIFAR10

    train, test = _open(
        "CIFAR-10", "cifar10", "the folder cifar-10-batches-py (from cifar-10-python.tar.gz)",
        root, download, lambda r, t, d: CIFAR10(r, train=t, download=d),
    )
    return _arrays("cifar10", train, test, "nhwc", tuple(train.classes), CIFAR10_MEAN, CIFAR10_STD)


@DATASETS.register("cifar100")
def cifar100(root: Path, download: bool = True) -> DataArrays:
    """CIFAR-100 (50,000 / 10,000 RGB 32x32 images, 100 classes), via torchvision."""
    from torchvision.datasets import CIFAR100

    train, test = _open(
        "CIFAR-100", "cifar100", "the folder cifar-100-python (from cifar-100-python.tar.gz)",
        root, download, lambda r, t, d: CIFAR100(r, train=t, download=d),
    )
    return _arrays(
        "cifar100", train, test, "nhwc", tuple(train.classes), CIFAR100_MEAN, CIFAR100_STD
    )


@DATASETS.register("svhn")
def svhn(root: Path, download: bool = True) -> DataArrays:
    """SVHN digits (73,257 / 26,032 RGB 32x32 images; the 'extra' split is not used)."""
    from torchvision.datasets import SVHN

    train, test = _open(
        "SVHN", "svhn", "the files train_32x32.mat and test_32x32.mat",
        root, download, lambda r, t, d: SVHN(r, split="train" if t else "test", download=d),
    )
    classes = tuple(str(i) for i in range(10))
    return _arrays("svhn", train, test, "nchw", classes, SVHN_MEAN, SVHN_STD, "labels")


@DATASETS.register("mnist")
def mnist(root: Path, download: bool = True) -> DataArrays:
    """MNIST (60,000 / 10,000 grey 28x28 images), via torchvision."""
    from torchvision.datasets import MNIST

    train, test = _open(
        "MNIST", "mnist", "the folder MNIST/raw/ (train-images-idx3-ubyte etc.)",
        root, download, lambda r, t, d: MNIST(r, train=t, download=d),
    )
    return _arrays("mnist", train, test, "nhw", tuple(train.classes), MNIST_MEAN, MNIST_STD)
