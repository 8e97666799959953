"""Any image classification data set laid out as ``train/<class>/*`` and ``test/<class>/*``.

``data.root`` is that folder or a ``.tar.gz`` / ``.tgz`` / ``.tar`` archive of it (optionally
inside one top-level folder); archives are decoded straight from the archive, without
extracting files to disk. Class folders sorted by name give the label indices. Every image
is decoded once with Pillow (as RGB) into one uint8 tensor per split; the result is cached as
a safetensors file in ``<data home>/decoded/`` ($ADAPTRAIN_DATA, else
$XDG_CACHE_HOME/adaptrain/data, else ~/.cache/adaptrain/data; never next to the input, which
may be read-only or shared). What it does and where the cache is goes to stderr, once.

The cache key of an archive is the SHA-256 of its bytes, so a copy or a move reuses the cache
and a changed archive is decoded again. Hashing reads the whole file (measured: 0.05 s for the
19.6 MB CIFAR-10 JPEG archive, so ~0.4 s for 170 MB, twice the 0.2 s of loading the 185 MB
decoded cache), so the hash is remembered in ``decoded/index.json`` under the archive's
(path, size, mtime). The key of a folder is a hash
of its path and its image files' relative paths, sizes and modification times. The index also
names each input's cache file, which is removed when that input changes.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import hashlib
import io
import json
import logging
import lzma
import os
import sys
import tarfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from .base import DATASETS, DataArrays, DataSpec, data_home

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".ppm", ".pgm", ".tif", ".tiff"}
)
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".tar.xz", ".tar.bz2")
SPLITS = ("train", "test")
DECODED = "decoded"  # the folder of the data home that holds decoded caches
INDEX = "index.json"  # in it: input path -> (size, mtime, sha256) and its cache file name
HASH_CHUNK = 1 << 20  # bytes read per step while hashing an archive
_FORMAT = "adaptrain-imagefolder-1"
_ZERO_BLOCK = bytes(512)
_UNPACK = {
    b"\x1f\x8b": gzip.decompress,
    b"BZh": bz2.decompress,
    b"\xfd7zXZ\x00": lzma.decompress,
}
_LAYOUT = (
    "point data.root at a folder holding train/<class>/ and test/<class>/ image folders, "
    "or at a .tar.gz of one"
)


@dataclass
class _File:
    parts: tuple[str, ...]  # (split, class, [subfolders...], file name)
    size: int
    source: Path | bytes  # a path on disk, or the bytes read from an archive
    where: str  # how to name the file in an error message
    mtime_ns: int = 0  # files on disk: a replaced file of the same size changes the cache key


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 120 else text[:117] + "..."


def _is_image(name: str) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def cache_dir() -> Path:
    """``<data home>/decoded``: where decoded images are cached (see the module docstring)."""
    return data_home() / DECODED


_SAID: set[str] = set()


def _say(line: str) -> None:
    """One line on stderr, once per process (a benchmark loads the same data for every row;
    rank 0 only under torchrun: every rank loads the same data)."""
    if os.environ.get("RANK", "0") in ("", "0") and line not in _SAID:
        _SAID.add(line)
        print(line, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------
# Finding the files


def _walk(directory: Path, prefix: tuple[str, ...], out: list[_File]) -> None:
    with os.scandir(directory) as entries:
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if entry.is_dir():
                _walk(Path(entry.path), (*prefix, entry.name), out)
            elif _is_image(entry.name) and entry.is_file():
                path, st = Path(entry.path), entry.stat()
                out.append(_File((*prefix, entry.name), st.st_size, path, str(path), st.st_mtime_ns))


def _scan_folder(root: Path) -> tuple[list[_File], dict[str, set[str]]]:
    files: list[_File] = []
    class_dirs: dict[str, set[str]] = {}
    for split in SPLITS:
        if not (root / split).is_dir():
            raise DataError("data.root", f"{root} has no {split}/ folder: {_LAYOUT}")
        class_dirs[split] = set()
        with os.scandir(root / split) as entries:
            for entry in entries:
                if entry.is_dir() and not entry.name.startswith("."):
                    class_dirs[split].add(entry.name)
                    _walk(Path(entry.path), (split, entry.name), files)
    return files, class_dirs


def _plain_ustar(content: bytes) -> list[tuple[str, bool, int, int]] | None:
    """``(name, is_dir, offset, size)`` of the directories and regular files of a plain
    ustar archive, or None when anything else appears (long names, pax headers, links, ...)
    and tarfile must read it. About ten times faster than tarfile on 60,000 small members.
    """
    out: list[tuple[str, bool, int, int]] = []
    pos = 0
    while pos + 512 <= len(content):
        header = content[pos : pos + 512]
        if header == _ZERO_BLOCK:
            return out
        kind = header[156:157]
        if header[257:262] != b"ustar" or kind not in (b"0", b"\0", b"5"):
            return None
        try:
            size = int(header[124:136].strip(b"\0 ") or b"0", 8)
            checksum = int(header[148:156].strip(b"\0 "), 8)
        except ValueError:
            return None
        if checksum != sum(header[:148]) + 8 * 32 + sum(header[156:]):
            return None
        name = header[:100].split(b"\0", 1)[0]
        prefix = header[345:500].split(b"\0", 1)[0] if header[257:265] == b"ustar\x0000" else b""
        if prefix:
            name = prefix + b"/" + name
        out.append((name.decode("utf-8", "surrogateescape"), kind == b"5", pos + 512, size))
        pos += 512 + (size + 511) // 512 * 512
    return out if pos == len(content) else None


def _tarfile_members(content: bytes) -> list[tuple[str, bool, int, int]]:
    out = []
    with tarfile.open(fileobj=io.BytesIO(content), mode="r:") as tar:
        for member in tar:
            if member.isdir() or (member.isfile() and not member.issparse()):
                out.append((member.name, member.isdir(), member.offset_data, member.size))
    return out


def _scan_archive(archive: Path) -> tuple[list[_File], dict[str, set[str]]]:
    files: list[_File] = []
    class_dirs: dict[str, set[str]] = {split: set() for split in SPLITS}
    try:
        # The whole decompressed archive is read into memory and members are sliced out of
        # it: several times faster than extracting member by member.
        content = archive.read_bytes()
        magic = content[:6]
        unpack = _UNPACK.get(magic[:2]) or _UNPACK.get(magic[:3]) or _UNPACK.get(magic)
        if unpack is not None:
            content = unpack(content)
        members = _plain_ustar(content)
        if members is None:
            members = _tarfile_members(content)
    except (tarfile.TarError, OSError, EOFError, ValueError, lzma.LZMAError) as exc:
        raise DataError(
            "data.root",
            f"cannot read the archive {archive} ({_short(exc)}): check or re-download it, "
            f"or extract it and point data.root at the folder",
        ) from None
    for name, is_dir, offset, size in members:
        parts = tuple(p for p in name.split("/") if p and p != ".")
        if len(parts) >= 2 and parts[0] not in SPLITS and parts[1] in SPLITS:
            parts = parts[1:]  # one top-level folder around train/ and test/
        if len(parts) < 2 or parts[0] not in SPLITS or any(p.startswith(".") for p in parts):
            continue
        if is_dir:
            class_dirs[parts[0]].add(parts[1])
        elif len(parts) >= 3 and _is_image(parts[-1]):
            class_dirs[parts[0]].add(parts[1])
            data = content[offset : offset + size]
            files.append(_File(parts, size, data, f"{archive}:{name}"))
    if not files and not any(class_dirs.values()):
        raise DataError("data.root", f"{archive} holds no train/ or test/ folder: {_LAYOUT}")
    return files, class_dirs


def _check_layout(
    files: list[_File], class_dirs: dict[str, set[str]], root: Path
) -> list[str]:
    """Class names (sorted) after checking that every class folder holds images."""
    for split in SPLITS:
        if not class_dirs[split]:
            raise DataError("data.root", f"{root} has no class folders in {split}/: {_LAYOUT}")
    classes = sorted(class_dirs["train"])
    unknown = sorted(class_dirs["test"] - set(classes))
    if unknown:
        raise DataError(
            "data.root",
            f"test/{unknown[0]} in {root} has no matching train/{unknown[0]} folder: "
            f"give train/ and test/ the same class folders",
        )
    present = {(f.parts[0], f.parts[1]) for f in files}
    for split in SPLITS:
        for name in sorted(class_dirs[split]):
            if (split, name) not in present:
                exts = ", ".join(sorted(IMAGE_EXTENSIONS))
                raise DataError(
                    "data.root",
                    f"class folder {split}/{name} in {root} holds no images ({exts}): "
                    f"add images to it or remove it",
                )
    return classes


def _folder_key(root: Path, files: list[_File]) -> str:
    digest = hashlib.sha256(f"{_FORMAT}\nfolder\n{root.resolve()}".encode())
    for f in files:
        digest.update(("\n" + "/".join(f.parts) + f"\t{f.size}\t{f.mtime_ns}").encode())
    return digest.hexdigest()[:20]


def _read_index(directory: Path) -> dict[str, dict]:
    try:
        index = json.loads((directory / INDEX).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(index, dict):
        return {}
    return {k: v for k, v in index.items() if isinstance(v, dict)}


def _write_index(directory: Path, index: dict[str, dict]) -> None:
    """Best effort (the index only saves work): atomic, and silent when it cannot be written."""
    tmp = directory / f".{INDEX}.{os.getpid()}.tmp"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(index, indent=1))
        os.replace(tmp, directory / INDEX)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def content_hash(archive: Path, index: dict[str, dict]) -> str:
    """SHA-256 (hex) of the archive's bytes, read in chunks; remembered in ``index`` under its
    resolved path with its size and mtime, and taken from there while both are unchanged."""
    st = archive.stat()
    seen = index.get(str(archive.resolve()), {})
    if seen.get("size") == st.st_size and seen.get("mtime_ns") == st.st_mtime_ns and seen.get("sha256"):
        return str(seen["sha256"])
    digest = hashlib.sha256()
    with open(archive, "rb") as fh:
        while chunk := fh.read(HASH_CHUNK):
            digest.update(chunk)
    index[str(archive.resolve())] = {**seen, "size": st.st_size, "mtime_ns": st.st_mtime_ns,
                                     "sha256": digest.hexdigest()}
    return digest.hexdigest()


def _archive_key(content: str) -> str:
    return hashlib.sha256(f"{_FORMAT}\narchive\n{content}".encode()).hexdigest()[:20]


# ----------------------------------------------------------------------------------------
# Decoding


def _decode(source: Path | bytes) -> np.ndarray:
    """One image as an (H, W, 3) uint8 array."""
    from PIL import Image

    with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
        if image.mode != "RGB":
            return np.asarray(image.convert("RGB"))
        return np.asarray(image)


def _decode_split(files: list[_File], shape: tuple[int, ...] | None, first: str) -> torch.Tensor:
    """Decode ``files`` into (N, 3, H, W) uint8; every image must have ``shape`` (H, W, 3)."""
    out: np.ndarray | None = None
    for i, f in enumerate(files):
        try:
            array = _decode(f.source)
        except Exception as exc:
            raise DataError(
                "data.root",
                f"cannot decode {f.where} ({_short(exc)}): replace or remove that file",
            ) from None
        if shape is None:
            shape, first = array.shape, f.where
        if array.shape != shape:
            raise DataError(
                "data.root",
                f"{f.where} is {array.shape[1]}x{array.shape[0]} pixels but {first} is "
                f"{shape[1]}x{shape[0]}: resize all images to one size first",
            )
        if out is None:
            out = np.empty((len(files), *shape), dtype=np.uint8)
        out[i] = array
    assert out is not None
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


def channel_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) std of uint8 images (N, C, H, W), on the [0, 1] scale.

    Exact and fast: a 256-bin histogram per channel, then the moments of the histogram.
    """
    counts = torch.stack(
        [torch.bincount(x[:, c].reshape(-1), minlength=256) for c in range(x.shape[1])]
    ).to(torch.float64)
    values = torch.arange(256, dtype=torch.float64) / 255.0
    n = counts.sum(dim=1)
    mean = (counts * values).sum(dim=1) / n
    var = ((counts * values * values).sum(dim=1) / n - mean * mean).clamp_min(0.0)
    return tuple(mean.tolist()), tuple(var.sqrt().tolist())


# ----------------------------------------------------------------------------------------
# Cache


def _may_write(directory: Path) -> bool:
    """Whether to write in ``directory`` (or in its nearest existing parent, which creates it).

    Besides the OS check, a folder without any write permission bit counts as read-only even
    for root: whoever made it read-only did not want caches in it.
    """
    while not directory.exists():
        if directory.parent == directory:
            return False
        directory = directory.parent
    try:
        return os.access(directory, os.W_OK) and bool(directory.stat().st_mode & 0o222)
    except OSError:
        return False


def _read_cache(path: Path) -> DataArrays | None:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
            if meta.get("format") != _FORMAT:
                return None
            t = {k: handle.get_tensor(k) for k in ("x_train", "y_train", "x_test", "y_test")}
        classes = tuple(json.loads(meta["classes"]))
        mean = tuple(float(v) for v in json.loads(meta["mean"]))
        std = tuple(float(v) for v in json.loads(meta["std"]))
    except Exception as exc:  # unreadable or partial cache: decode again
        log.warning("ignoring unreadable cache %s (%s)", path, _short(exc))
        return None
    x_train = t["x_train"]
    if x_train.dtype != torch.uint8 or x_train.dim() != 4:
        return None
    spec = DataSpec(
        name="imagefolder",
        num_classes=len(classes),
        in_channels=int(x_train.shape[1]),
        image_size=(int(x_train.shape[2]), int(x_train.shape[3])),
        mean=mean,
        std=std,
        class_names=classes,
    )
    return DataArrays(spec, x_train, t["y_train"], t["x_test"], t["y_test"])


def _write_cache(dirs: list[Path], filename: str, arrays: DataArrays) -> Path | None:
    from safetensors.torch import save_file

    tensors = {
        "x_train": arrays.x_train,
        "y_train": arrays.y_train,
        "x_test": arrays.x_test,
        "y_test": arrays.y_test,
    }
    meta = {
        "format": _FORMAT,
        "classes": json.dumps(list(arrays.spec.class_names)),
        "mean": json.dumps(list(arrays.spec.mean)),
        "std": json.dumps(list(arrays.spec.std)),
    }
    for directory in dirs:
        if not _may_write(directory):
            continue
        target = directory / filename
        tmp = directory / f".{filename}.{os.getpid()}.tmp"
        try:
            directory.mkdir(parents=True, exist_ok=True)
            save_file(tensors, str(tmp), metadata=meta)
            os.replace(tmp, target)
        except Exception as exc:  # not writable (read-only, permissions, full disk): next place
            log.info("cannot cache in %s (%s)", directory, _short(exc))
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            continue
        return target
    warnings.warn(
        f"could not cache the decoded images in {' or '.join(map(str, dirs))}; "
        "they will be decoded again next time",
        stacklevel=3,
    )
    return None


# ----------------------------------------------------------------------------------------
# The registered loader


TEST_ORDER_SEED = 0


@DATASETS.register("imagefolder")
def imagefolder(root: Path, download: bool = True) -> DataArrays:
    """A folder (or .tar.gz) with train/<class>/ and test/<class>/ images of one size.

    Files are read in sorted order, i.e. grouped by class; the test split is then put in a
    fixed pseudo-random order (seed ``TEST_ORDER_SEED``), so that the first n test images —
    what ``adaptrain eval --n`` and per-epoch validation on the test split use — are a sample
    of every class, as in CIFAR-10's own test batch. (Training draws its subset and validation
    split through a permutation anyway.)"""
    arrays = _load_imagefolder(root)
    order = torch.randperm(arrays.y_test.shape[0], generator=torch.Generator().manual_seed(TEST_ORDER_SEED))
    arrays.x_test, arrays.y_test = arrays.x_test[order], arrays.y_test[order]
    return arrays


def _load_imagefolder(root: Path) -> DataArrays:
    root = Path(root).expanduser()
    if not root.exists():
        raise DataError("data.root", f"{root} does not exist: {_LAYOUT}")
    archive = root.is_file()
    if archive and not root.name.lower().endswith(ARCHIVE_SUFFIXES):
        raise DataError("data.root", f"{root} is neither a folder nor a .tar.gz archive: {_LAYOUT}")

    files: list[_File] | None = None
    directory = cache_dir()
    index = _read_index(directory)
    if archive:
        before = dict(index.get(str(root.resolve()), {}))
        key, stem = _archive_key(content_hash(root, index)), root.name
        if index[str(root.resolve())] != before:  # hashed now: remember it even on a cache hit
            _write_index(directory, index)
    else:
        files, class_dirs = _scan_folder(root)
        classes = _check_layout(files, class_dirs, root)
        key, stem = _folder_key(root, files), "imagefolder"
    filename = f"{stem}-{key}.safetensors"
    if (directory / filename).is_file():
        cached = _read_cache(directory / filename)
        if cached is not None:
            _say(f"data: the images of {root} as decoded earlier: {directory / filename}")
            if index.get(str(root.resolve()), {}).get("cache") != filename:
                _forget_previous(directory, index, str(root.resolve()), filename)
            return cached

    _say(f"data: decoding the images of {root} once; cache: {directory / filename}")
    started = time.perf_counter()
    if files is None:
        files, class_dirs = _scan_archive(root)
        classes = _check_layout(files, class_dirs, root)
    files.sort(key=lambda f: f.parts)
    label_of = {name: i for i, name in enumerate(classes)}
    train = [f for f in files if f.parts[0] == "train"]
    test = [f for f in files if f.parts[0] == "test"]
    x_train = _decode_split(train, None, "")
    shape = (x_train.shape[2], x_train.shape[3], x_train.shape[1])
    x_test = _decode_split(test, shape, train[0].where)
    y_train = torch.tensor([label_of[f.parts[1]] for f in train], dtype=torch.int64)
    y_test = torch.tensor([label_of[f.parts[1]] for f in test], dtype=torch.int64)
    mean, std = channel_stats(x_train)
    spec = DataSpec(
        name="imagefolder",
        num_classes=len(classes),
        in_channels=3,
        image_size=(int(x_train.shape[2]), int(x_train.shape[3])),
        mean=mean,
        std=std,
        class_names=tuple(classes),
    )
    arrays = DataArrays(spec, x_train, y_train, x_test, y_test)
    written = _write_cache([directory], filename, arrays)
    _say(f"data: decoded {len(train)} + {len(test)} images in {time.perf_counter() - started:.1f} s"
         + ("" if written else " (not cached)"))
    if written:
        _forget_previous(directory, index, str(root.resolve()), filename)
    return arrays


def _forget_previous(directory: Path, index: dict[str, dict], source: str, filename: str) -> None:
    """Record ``filename`` as the cache of ``source``; delete the cache of its previous
    contents unless another input still names it."""
    entry = dict(index.get(source, {}))
    old = entry.get("cache")
    entry["cache"] = filename
    index[source] = entry
    if old and old != filename and not any(e.get("cache") == old for e in index.values()):
        with contextlib.suppress(OSError):
            (directory / str(old)).unlink(missing_ok=True)
    _write_index(directory, index)
