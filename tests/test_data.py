"""Data sets, splits and the on-device batch loader (all offline, all small)."""

from __future__ import annotations

import gzip
import socket
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from adaptrain.data import (
    DATASETS,
    BatchLoader,
    DataArrays,
    DataSpec,
    load_arrays,
    make_splits,
    torchvision_sets,
)
from adaptrain.data import imagefolder as imagefolder_module
from adaptrain.errors import ConfigError, DataError

CLASSES = ("dog", "airplane", "cat")  # sorted: airplane=0, cat=1, dog=2


@pytest.fixture(autouse=True)
def _private_caches(tmp_path, monkeypatch):
    """Keep every fallback cache and default data folder inside the test's tmp_path."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("ADAPTRAIN_DATA", str(tmp_path / "data-home"))


def decoded(tmp_path: Path, pattern: str = "*.safetensors") -> list[Path]:
    """The decoded caches in the data home the fixture above points at."""
    return sorted((tmp_path / "data-home" / "decoded").glob(pattern))


def assert_data_error(exc: pytest.ExceptionInfo, field: str, *fragments: str) -> str:
    err = exc.value
    assert isinstance(err, DataError)
    assert err.field == field
    assert "\n" not in err.message
    for fragment in fragments:
        assert fragment in err.message, (fragment, err.message)
    return err.message


# --------------------------------------------------------------------------------------
# digits


@pytest.fixture(scope="module")
def digits() -> DataArrays:
    return load_arrays("digits", None)


def test_registry_names():
    assert {"digits", "cifar10", "cifar100", "svhn", "mnist", "imagefolder"} <= set(
        DATASETS.names()
    )
    with pytest.raises(ConfigError) as exc:
        load_arrays("nope", None)
    assert exc.value.field == "data.name"
    assert "cifar10" in exc.value.message


def test_digits_shapes_and_split(digits):
    a = digits
    assert a.x_train.shape == (1437, 1, 8, 8) and a.x_test.shape == (360, 1, 8, 8)
    assert a.x_train.dtype == torch.uint8 and a.y_train.dtype == torch.int64
    assert a.y_train.shape == (1437,) and a.y_test.shape == (360,)
    assert int(a.x_train.max()) == 255 and int(a.x_train.min()) == 0
    assert set(a.y_train.tolist()) == set(range(10)) == set(a.y_test.tolist())
    # stratified: every class has 35..37 test images out of 360
    counts = torch.bincount(a.y_test, minlength=10)
    assert int(counts.min()) >= 35 and int(counts.max()) <= 37
    spec = a.spec
    assert (spec.num_classes, spec.in_channels, spec.image_size) == (10, 1, (8, 8))
    values = a.x_train.double() / 255
    assert spec.mean[0] == pytest.approx(float(values.mean()), abs=1e-6)
    assert spec.std[0] == pytest.approx(float(values.std()), abs=1e-3)


def test_digits_is_deterministic(digits):
    torch.manual_seed(123)
    np.random.seed(123)
    again = load_arrays("digits", "/nonexistent/ignored")
    assert torch.equal(again.x_train, digits.x_train) and torch.equal(again.y_test, digits.y_test)
    # pixels are round(v * 255 / 16) of scikit-learn's 0..16 values
    assert set(torch.unique(digits.x_train).tolist()) <= {round(v * 255 / 16) for v in range(17)}


# --------------------------------------------------------------------------------------
# imagefolder


def pixel(split: str, cls: int, i: int) -> tuple[int, int, int]:
    return (10 + 40 * cls, 5 + 20 * i, 200 if split == "train" else 100)


def make_tree(root: Path, size=(5, 4), n_train=3, n_test=2) -> Path:
    """train/<class>/<i>.png and test/<class>/<i>.png, solid colours that encode the label."""
    for split, n in (("train", n_train), ("test", n_test)):
        for name in CLASSES:
            folder = root / split / name
            folder.mkdir(parents=True)
            label = sorted(CLASSES).index(name)
            for i in range(n):
                Image.new("RGB", size, pixel(split, label, i)).save(folder / f"{i:03d}.png")
    (root / "train" / "dog" / "notes.txt").write_text("not an image")
    return root


def check_tree_arrays(a: DataArrays, n_train=3, n_test=2) -> None:
    assert a.spec.class_names == ("airplane", "cat", "dog")
    assert a.spec.num_classes == 3 and a.spec.in_channels == 3 and a.spec.image_size == (4, 5)
    assert a.x_train.shape == (3 * n_train, 3, 4, 5) and a.x_test.shape == (3 * n_test, 3, 4, 5)
    assert a.x_train.dtype == torch.uint8 and a.y_train.dtype == torch.int64
    for x, y, split in ((a.x_train, a.y_train, "train"), (a.x_test, a.y_test, "test")):
        for k in range(len(y)):
            label = int(y[k])
            colour = tuple(int(v) for v in x[k, :, 0, 0])
            assert colour[0] == pixel(split, label, 0)[0]  # the colour encodes the label
            assert colour[2] == pixel(split, label, 0)[2]
            assert bool((x[k] == x[k, :, :1, :1]).all())  # solid image
    values = a.x_train.double() / 255
    mean = values.mean(dim=(0, 2, 3))
    std = values.std(dim=(0, 2, 3), correction=0)
    assert a.spec.mean == pytest.approx(mean.tolist(), abs=1e-9)
    assert a.spec.std == pytest.approx(std.tolist(), abs=1e-9)


def test_imagefolder_labels_and_cache(tmp_path, monkeypatch):
    root = make_tree(tmp_path / "tree")
    a = load_arrays("imagefolder", root)
    check_tree_arrays(a)
    assert a.y_train.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert len(decoded(tmp_path)) == 1

    calls = []
    real_decode = imagefolder_module._decode

    def counting_decode(source):
        calls.append(source)
        return real_decode(source)

    monkeypatch.setattr(imagefolder_module, "_decode", counting_decode)
    b = load_arrays("imagefolder", str(root))
    assert calls == []  # came from the cache
    assert b.spec == a.spec
    for key in ("x_train", "y_train", "x_test", "y_test"):
        assert torch.equal(getattr(a, key), getattr(b, key))

    # a changed file list changes the key: decoded again, old cache file replaced
    Image.new("RGB", (5, 4), pixel("train", 1, 3)).save(root / "train" / "cat" / "003.png")
    c = load_arrays("imagefolder", root)
    assert len(calls) == 10 + 6 and c.x_train.shape[0] == 10
    assert len(decoded(tmp_path)) == 1


def test_imagefolder_test_split_comes_in_a_fixed_mixed_order(tmp_path):
    root = make_tree(tmp_path / "tree", n_test=8)
    a = load_arrays("imagefolder", root)
    b = load_arrays("imagefolder", root)
    assert torch.equal(a.y_test, b.y_test) and torch.equal(a.x_test, b.x_test)
    assert sorted(a.y_test.tolist()) == [0] * 8 + [1] * 8 + [2] * 8  # every image, once
    assert a.y_test.tolist() != sorted(a.y_test.tolist())  # not grouped by class
    assert len(set(a.y_test[:6].tolist())) > 1  # the first n hold several classes


def test_imagefolder_default_root_read_only(tmp_path, monkeypatch):
    root = make_tree(tmp_path / "data-home" / "imagefolder")  # = $ADAPTRAIN_DATA/imagefolder
    mode = root.stat().st_mode
    root.chmod(0o555)
    try:
        a = load_arrays("imagefolder", None)
    finally:
        root.chmod(mode)
    check_tree_arrays(a)
    assert len(decoded(tmp_path)) == 1
    calls = []
    monkeypatch.setattr(imagefolder_module, "_decode", lambda s: calls.append(s))
    root.chmod(0o555)
    try:
        b = load_arrays("imagefolder", None)
    finally:
        root.chmod(mode)
    assert calls == [] and torch.equal(a.x_test, b.x_test)


@pytest.mark.parametrize("layout", ["plain", "top_folder", "pax_fallback"])
def test_imagefolder_archive(tmp_path, monkeypatch, layout):
    tree = make_tree(tmp_path / "tree")
    if layout == "pax_fallback":  # a non-ASCII name needs a pax header: read by tarfile
        (tree / "train" / "airplane" / "000.png").rename(tree / "train" / "airplane" / "é.png")
    archive = tmp_path / "archives" / "set.tar.gz"
    archive.parent.mkdir()
    fmt = tarfile.PAX_FORMAT if layout == "pax_fallback" else tarfile.GNU_FORMAT
    with tarfile.open(archive, "w:gz", format=fmt) as tar:
        for split in ("train", "test"):
            tar.add(tree / split, arcname=f"top/{split}" if layout == "top_folder" else split)
    content = gzip.decompress(archive.read_bytes())
    assert (imagefolder_module._plain_ustar(content) is None) == (layout == "pax_fallback")

    a = load_arrays("imagefolder", archive)
    check_tree_arrays(a)
    assert len(decoded(tmp_path, "set.tar.gz-*")) == 1 and list(archive.parent.iterdir()) == [archive]
    monkeypatch.setattr(imagefolder_module, "_scan_archive", None)  # must not be needed
    b = load_arrays("imagefolder", archive)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)


def test_imagefolder_corrupt_cache_is_rebuilt(tmp_path):
    root = make_tree(tmp_path / "tree")
    a = load_arrays("imagefolder", root)
    (cache,) = decoded(tmp_path)
    cache.write_bytes(cache.read_bytes()[:100])
    b = load_arrays("imagefolder", root)
    assert torch.equal(a.x_train, b.x_train)
    assert cache.stat().st_size > 100


def test_imagefolder_mismatched_sizes(tmp_path):
    root = make_tree(tmp_path / "tree")
    Image.new("RGB", (6, 4), (1, 2, 3)).save(root / "test" / "cat" / "odd.png")
    with pytest.raises(DataError) as exc:
        load_arrays("imagefolder", root)
    assert_data_error(exc, "data.root", "odd.png", "6x4", "5x4")


@pytest.mark.parametrize("problem", ["no_root", "no_test", "empty_class", "stray_test_class"])
def test_imagefolder_layout_errors(tmp_path, problem):
    root = tmp_path / "tree"
    if problem != "no_root":
        make_tree(root)
    if problem == "no_test":
        for f in sorted((root / "test").rglob("*"), reverse=True):
            f.unlink() if f.is_file() else f.rmdir()
        (root / "test").rmdir()
    elif problem == "empty_class":
        (root / "train" / "zebra").mkdir()
    elif problem == "stray_test_class":
        (root / "test" / "zebra").mkdir()
        Image.new("RGB", (5, 4)).save(root / "test" / "zebra" / "0.png")
    with pytest.raises(DataError) as exc:
        load_arrays("imagefolder", root)
    expected = {
        "no_root": (str(root), "does not exist", "train/<class>/"),
        "no_test": (str(root), "has no test/ folder"),
        "empty_class": ("train/zebra", "holds no images"),
        "stray_test_class": ("test/zebra", "same class folders"),
    }
    assert_data_error(exc, "data.root", *expected[problem])


# --------------------------------------------------------------------------------------
# torchvision data sets (offline)


def test_cifar10_missing_offline(tmp_path):
    with pytest.raises(DataError) as exc:
        load_arrays("cifar10", tmp_path / "empty", download=False)
    assert_data_error(
        exc, "data.root", "data.root=DIR", "cifar-10-batches-py", "data.name=imagefolder"
    )


@pytest.mark.parametrize(
    ("layout", "data", "labels"),
    [
        ("nhwc", np.zeros((4, 5, 6, 3), np.uint8), [0, 1, 2, 1]),  # CIFAR: numpy NHWC, list
        ("nchw", np.zeros((4, 3, 5, 6), np.uint8), np.array([0, 1, 2, 1])),  # SVHN
        ("nhw", torch.zeros(4, 5, 6, dtype=torch.uint8), torch.tensor([0, 1, 2, 1])),  # MNIST
    ],
)
def test_torchvision_arrays_conversion(layout, data, labels):
    class Fake:
        pass

    split = Fake()
    split.data, split.targets = data, labels
    a = torchvision_sets._arrays("fake", split, split, layout, ("a", "b", "c"), (0.5,), (0.2,))
    channels = 1 if layout == "nhw" else 3
    assert a.x_train.shape == (4, channels, 5, 6) and a.x_train.dtype == torch.uint8
    assert a.x_train.is_contiguous() and a.y_test.dtype == torch.int64
    assert a.y_train.tolist() == [0, 1, 2, 1]
    assert a.spec.image_size == (5, 6) and a.spec.in_channels == channels


def test_download_failure_is_one_error_and_restores_timeout(tmp_path):
    seen = []

    def make(root, train, download):
        seen.append((download, socket.getdefaulttimeout()))
        raise RuntimeError("Dataset not found" if not download else "<urlopen error offline>")

    before = socket.getdefaulttimeout()
    with pytest.raises(DataError) as exc:
        torchvision_sets._open("CIFAR-10", "cifar10", "cifar-10-batches-py", tmp_path, True, make)
    assert socket.getdefaulttimeout() == before
    assert seen == [(False, before), (True, torchvision_sets.DOWNLOAD_TIMEOUT)]
    assert_data_error(exc, "data.root", "download failed", "urlopen error offline")


# --------------------------------------------------------------------------------------
# splits


def toy_arrays(n=100, n_test=7) -> DataArrays:
    ids = torch.arange(n)
    x = torch.stack([ids % 256, ids // 256], dim=1).to(torch.uint8).view(n, 1, 1, 2)
    y = ids % 5
    spec = DataSpec("toy", 5, 1, (1, 2), (0.5,), (0.25,))
    return DataArrays(spec, x, y, torch.zeros(n_test, 1, 1, 2, dtype=torch.uint8), y[:n_test])


def ids_of(x: torch.Tensor) -> list[int]:
    return (x[:, 0, 0, 0].long() + 256 * x[:, 0, 0, 1].long()).tolist()


def test_make_splits_sizes_and_disjoint():
    a = toy_arrays()
    s = make_splits(a, subset=20, val_size=10)
    assert s.x_train.shape == (20, 1, 1, 2) and s.x_val.shape == (10, 1, 1, 2)
    assert s.y_train.tolist() == [i % 5 for i in ids_of(s.x_train)]
    assert s.y_val.tolist() == [i % 5 for i in ids_of(s.x_val)]
    assert not set(ids_of(s.x_train)) & set(ids_of(s.x_val))
    assert s.x_test is a.x_test and s.spec is a.spec
    full = make_splits(a, subset=None, val_size=10)
    assert full.x_train.shape[0] == 90
    assert sorted(ids_of(full.x_train) + ids_of(full.x_val)) == list(range(100))
    assert ids_of(full.x_train)[:20] == ids_of(s.x_train)  # subsets are nested
    empty = make_splits(a, subset=None, val_size=0)
    assert empty.x_val.shape == (0, 1, 1, 2) and empty.y_val.shape == (0,)


def test_make_splits_depends_only_on_split_seed():
    a = toy_arrays()
    torch.manual_seed(1)
    s1 = make_splits(a, subset=30, val_size=10)
    torch.manual_seed(2)
    torch.rand(5)
    s2 = make_splits(a, subset=30, val_size=10)
    assert ids_of(s1.x_val) == ids_of(s2.x_val) and ids_of(s1.x_train) == ids_of(s2.x_train)
    s3 = make_splits(a, subset=30, val_size=10, split_seed=1)
    assert ids_of(s3.x_val) != ids_of(s1.x_val)


def test_make_splits_errors():
    a = toy_arrays()
    with pytest.raises(DataError) as exc:
        make_splits(a, subset=91, val_size=10)
    assert_data_error(
        exc, "data.subset", "91 is larger than the 90 training images left after holding out "
        "data.val_size=10"
    )
    with pytest.raises(DataError) as exc:
        make_splits(a, subset=0, val_size=10)
    assert_data_error(exc, "data.subset")
    for bad in (-1, 100):
        with pytest.raises(DataError) as exc:
            make_splits(a, subset=None, val_size=bad)
        assert_data_error(exc, "data.val_size", str(bad))


# --------------------------------------------------------------------------------------
# BatchLoader


def random_images(n=37, c=3, h=6, w=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, c, h, w), generator=g, dtype=torch.int64).to(torch.uint8)
    y = torch.randint(0, 10, (n,), generator=g)
    return x, y


def run_epoch(loader):
    return [tuple(t.clone() for t in batch) for batch in loader]


def test_loader_covers_each_index_once_and_maps_back():
    x, y = random_images()
    gen = torch.Generator().manual_seed(0)
    loader = BatchLoader(x, y, batch_size=8, shuffle=True, generator=gen)
    assert len(loader) == 5
    batches = run_epoch(loader)
    assert len(batches) == 5 and [b[0].shape[0] for b in batches] == [8, 8, 8, 8, 5]
    idx = torch.cat([b[2] for b in batches])
    assert sorted(idx.tolist()) == list(range(37))
    assert idx.tolist() != list(range(37))  # shuffled
    for xb, yb, ib in batches:
        assert xb.dtype == torch.float32 and yb.dtype == torch.int64 and ib.dtype == torch.int64
        assert torch.equal(xb, x[ib].float() / 255) and torch.equal(yb, y[ib])
    dropped = BatchLoader(x, y, batch_size=8, drop_last=True)
    assert len(dropped) == 4 and len(run_epoch(dropped)) == 4
    plain = run_epoch(BatchLoader(x, y, batch_size=10))
    assert torch.cat([b[2] for b in plain]).tolist() == list(range(37))


@pytest.mark.parametrize("augment", ["none", "crop_flip"])
def test_loader_same_generator_state_same_batches(augment):
    x, y = random_images()
    gen = torch.Generator().manual_seed(5)
    loader = BatchLoader(x, y, batch_size=8, shuffle=True, augment=augment, generator=gen)
    state = gen.get_state()
    first = run_epoch(loader)
    second = run_epoch(loader)  # the generator moved on: another order
    gen.set_state(state)
    again = run_epoch(loader)  # as after a resume
    other = run_epoch(
        BatchLoader(x, y, batch_size=8, shuffle=True, augment=augment,
                    generator=torch.Generator().manual_seed(5))
    )
    for a, b in zip(first, again, strict=True):
        assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))
    for a, b in zip(first, other, strict=True):
        assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))
    assert not torch.equal(torch.cat([b[2] for b in first]), torch.cat([b[2] for b in second]))


def test_loader_draws_happen_when_the_epoch_starts():
    x, y = random_images()
    gen = torch.Generator().manual_seed(5)
    loader = BatchLoader(x, y, batch_size=8, shuffle=True, augment="crop_flip", generator=gen)
    reference = run_epoch(loader)
    gen.manual_seed(5)
    out = []
    for batch in loader:
        torch.rand(3, generator=gen)  # someone else uses the generator between batches
        out.append(batch)
    for a, b in zip(reference, out, strict=True):
        assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))


def matches_some_crop(out: torch.Tensor, original: torch.Tensor, pad: int) -> bool:
    h, w = original.shape[1:]
    padded = F.pad(original.float()[None], (pad, pad, pad, pad), mode="reflect")[0]
    for dy in range(2 * pad + 1):
        for dx in range(2 * pad + 1):
            crop = padded[:, dy : dy + h, dx : dx + w] / 255
            if torch.equal(out, crop) or torch.equal(out, crop.flip(-1)):
                return True
    return False


def test_loader_crop_flip_is_a_crop_of_the_padded_image():
    x, y = random_images(n=40, h=6, w=10)
    pad = 3
    loader = BatchLoader(x, y, batch_size=16, shuffle=True, augment="crop_flip", pad=pad,
                         generator=torch.Generator().manual_seed(1))
    changed = 0
    for xb, yb, ib in loader:
        assert xb.shape == (xb.shape[0], 3, 6, 10) and xb.dtype == torch.float32
        assert float(xb.min()) >= 0.0 and float(xb.max()) <= 1.0
        assert torch.equal(yb, y[ib])
        for k in range(0, xb.shape[0], 3):
            assert matches_some_crop(xb[k], x[ib[k]], pad)
        changed += int((xb != x[ib].float() / 255).flatten(1).any(1).sum())
    assert changed > 20  # almost every image is moved or flipped


def test_loader_flip_only():
    x, y = random_images(n=64)
    loader = BatchLoader(x, y, batch_size=64, augment="flip",
                         generator=torch.Generator().manual_seed(0))
    xb, _, ib = next(iter(loader))
    plain = x[ib].float() / 255
    same = (xb == plain).flatten(1).all(1)
    flipped = (xb == plain.flip(-1)).flatten(1).all(1)
    assert bool((same | flipped).all())
    assert 10 < int(flipped.sum()) < 54


def test_loader_sharding_cuts_the_single_process_batches_into_contiguous_shards():
    x, y = random_images(n=38)

    def loader(rank: int, world: int) -> BatchLoader:
        return BatchLoader(x, y, batch_size=8, shuffle=True, augment="crop_flip", rank=rank,
                           world_size=world, generator=torch.Generator().manual_seed(9))

    whole = run_epoch(loader(0, 1))
    shards = [run_epoch(loader(rank, 3)) for rank in range(3)]
    assert all(len(loader(r, 3)) == len(whole) == len(s) == 5 for r, s in enumerate(shards))
    for b, (xb, yb, ib) in enumerate(whole):
        # the global batch b, in order, is the concatenation of the ranks' shards of it
        assert torch.equal(torch.cat([s[b][2] for s in shards]), ib)
        assert torch.equal(torch.cat([s[b][0] for s in shards]), xb)  # same crops and flips
        assert torch.equal(torch.cat([s[b][1] for s in shards]), yb)
    # the last global batch has 6 rows: 2 per rank; the others 8: 3, 3, 2
    assert [len(s[-1][2]) for s in shards] == [2, 2, 2]
    assert [len(s[0][2]) for s in shards] == [3, 3, 2]


def test_loader_requires_generator():
    x, y = random_images(n=4)
    with pytest.raises(ValueError):
        BatchLoader(x, y, batch_size=2, shuffle=True)
    with pytest.raises(ValueError):
        BatchLoader(x, y, batch_size=2, augment="crop_flip")
    with pytest.raises(ValueError):
        BatchLoader(x, y, batch_size=2, augment="rotate", generator=torch.Generator())

