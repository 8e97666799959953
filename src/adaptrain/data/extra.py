"""Generated extra training images (``data.extra``), memory-mapped, never read whole.

The format is the one public DDPM/EDM-generated sets use: ``image`` uint8 (N, H, W, C) and
``label`` integer (N,). ``data.extra`` names either

* one ``.npz`` holding both, written uncompressed (``np.savez``): each member is mapped at its
  offset inside the zip file (a stored member is a plain ``.npy`` there); or
* a directory of shards, taken in file-name order: ``*.npz`` files as above and/or pairs
  ``NAME_image.npy`` + ``NAME_label.npy`` (``np.save``; tens of millions of images).

Compressed members (``np.savez_compressed``) cannot be mapped; ``python -m
adaptrain.data.extra unpack SRC.npz DIR`` streams them once into ``.npy`` pairs. Extra image j
(counting through the shards) is training-set index ``n_real + j``, so per-sample memories have
a place for it. Every problem is a one-line ConfigError naming ``data.extra``.
"""

from __future__ import annotations

import struct
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ConfigError

FIELD = "data.extra"
EXTRA_REQUIRED = "required"  # data.extra of presets that train on generated data: the user gives it
_LOCAL_HEADER = 30  # bytes of a zip local file header before its name and extra field
_LABEL_CHUNK = 1 << 22  # labels checked this many at a time


def _fail(message: str) -> ConfigError:
    return ConfigError(FIELD, message)


@dataclass
class Shard:
    """One file (or pair of files) of the set: ``images`` (n, H, W, C) and ``labels`` (n,)."""

    name: str
    images: np.ndarray  # np.memmap, uint8
    labels: np.ndarray  # np.memmap, an integer dtype


class ExtraData:
    """The shards of ``path`` behind one index 0 .. N-1 (``read`` gathers rows of it)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()
        self.shards = [_check_pair(s) for s in _open_shards(self.path)]
        shapes = {s.images.shape[1:] for s in self.shards}
        if len(shapes) > 1:
            raise _fail(f"the shards of {self.path} hold images of different shapes "
                        f"{sorted(shapes)}; all must be (H, W, C) alike")
        self.image_shape: tuple[int, int, int] = tuple(int(v) for v in shapes.pop())
        sizes = [int(s.images.shape[0]) for s in self.shards]
        self.starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)

    def __len__(self) -> int:
        return int(self.starts[-1])

    def check_against(self, image_shape: tuple[int, int, int], num_classes: int) -> None:
        """The real data's (H, W, C) and label range: a mismatch stops before training."""
        if self.image_shape != tuple(image_shape):
            h, w, c = image_shape
            raise _fail(f"{self.path} holds images of (H, W, C) = {self.image_shape}, the data "
                        f"set's are {(h, w, c)}: give images as uint8 (N, {h}, {w}, {c})")
        for s in self.shards:
            for lo in range(0, s.labels.shape[0], _LABEL_CHUNK):
                part = np.asarray(s.labels[lo:lo + _LABEL_CHUNK])
                bad = (part < 0) | (part >= num_classes)
                if bad.any():
                    k = int(np.flatnonzero(bad)[0])
                    raise _fail(f"{s.name}: label {int(part[k])} of image {lo + k} is outside "
                                f"0 .. {num_classes - 1} (the data set has {num_classes} classes)")

    def read(self, j: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Images (k, H, W, C) uint8 and labels (k,) int64 of extra indices ``j`` (any order):
        each shard's rows are read in ascending order (sequential on disk), then put back."""
        j = np.asarray(j, dtype=np.int64)
        images = np.empty((j.shape[0], *self.image_shape), dtype=np.uint8)
        labels = np.empty(j.shape[0], dtype=np.int64)
        order = np.argsort(j, kind="stable")
        js = j[order]
        cuts = np.searchsorted(js, self.starts[1:-1], side="left")
        for shard, lo, part in zip(self.shards, self.starts[:-1], np.split(np.arange(js.shape[0]), cuts),
                                   strict=True):
            if part.size == 0:
                continue
            rows = js[part] - lo
            images[order[part]] = shard.images[rows]
            labels[order[part]] = shard.labels[rows]
        return images, labels


def check_extra(extra: str | None) -> None:
    """Before any work: a preset's placeholder refused, the files' headers checked (cheap: no
    image is read). The shape and label range against the data set wait for :class:`ExtraData`
    in the run's setup."""
    if extra is None:
        return
    if extra == EXTRA_REQUIRED:
        raise _fail("this preset mixes generated images into every batch: give data.extra=PATH "
                    "(an .npz with image and label, or a directory of shards; docs/extra-data.md)")
    ExtraData(extra)


def extra_rows(fraction: float, batch_size: int) -> int:
    """Generated rows of a full batch: ``fraction * batch_size`` rounded to the nearest (halves
    up, not Python's to-even)."""
    return int(np.floor(fraction * batch_size + 0.5))


# ---------------------------------------------------------------------------------------
# opening files


def _open_shards(path: Path) -> list[Shard]:
    if path.is_dir():
        npz = sorted(path.glob("*.npz"))
        images = sorted(path.glob("*_image.npy"))
        labels = {p.name for p in path.glob("*_label.npy")}
        for p in images:
            if p.name.replace("_image.npy", "_label.npy") not in labels:
                raise _fail(f"{p} has no {p.name.replace('_image.npy', '_label.npy')} beside it")
        for name in sorted(labels):
            if not (path / name.replace("_label.npy", "_image.npy")).is_file():
                raise _fail(f"{path / name} has no {name.replace('_label.npy', '_image.npy')} beside it")
        pairs = [(p.name, p) for p in npz] + [(p.name, p) for p in images]
        if not pairs:
            raise _fail(f"{path} holds no shards: *.npz (image, label) or NAME_image.npy + "
                        "NAME_label.npy pairs")
        shards = []
        for _, p in sorted(pairs):
            if p.suffix == ".npz":
                shards.append(_open_npz(p))
            else:
                shards.append(Shard(p.name, _open_npy(p), _open_npy(p.with_name(
                    p.name.replace("_image.npy", "_label.npy")))))
        return shards
    if path.is_file():
        if path.suffix != ".npz":
            raise _fail(f"{path} is not an .npz file; give an .npz (image, label) or a directory "
                        "of shards")
        return [_open_npz(path)]
    raise _fail(f"no such file or directory: {path}")


def _open_npy(path: Path) -> np.ndarray:
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise _fail(f"{path} is not a readable .npy file ({type(exc).__name__}: "
                    f"{str(exc).splitlines()[0][:120] if str(exc) else ''})") from None
    if not isinstance(arr, np.memmap):  # np.load maps every non-empty plain array
        raise _fail(f"{path} holds an empty array")
    return arr


def _open_npz(path: Path) -> Shard:
    try:
        with zipfile.ZipFile(path) as zf:
            infos = {i.filename: i for i in zf.infolist()}
    except (OSError, zipfile.BadZipFile) as exc:
        raise _fail(f"{path} is not a readable .npz file ({type(exc).__name__}: {exc})") from None
    got = {}
    for key in ("image", "label"):
        info = infos.get(f"{key}.npy")
        if info is None:
            have = ", ".join(sorted(n.removesuffix(".npy") for n in infos)) or "none"
            raise _fail(f"{path} has no {key!r} array (it holds: {have}); the format is "
                        "image uint8 (N, H, W, C) and label (N,)")
        if info.compress_type != zipfile.ZIP_STORED:
            raise _fail(f"{key!r} in {path} is compressed (np.savez_compressed) and cannot be "
                        f"memory-mapped; unpack it once: python -m adaptrain.data.extra unpack "
                        f"{path} DIR, then give data.extra=DIR")
        got[key] = _map_member(path, info)
    return Shard(path.name, got["image"], got["label"])


def _map_member(path: Path, info: zipfile.ZipInfo) -> np.ndarray:
    """The stored ``.npy`` member ``info`` of the zip file ``path`` as a read-only memmap."""
    where = f"{path}[{info.filename}]"
    try:
        with open(path, "rb") as f:
            f.seek(info.header_offset)
            head = f.read(_LOCAL_HEADER)
            if len(head) < _LOCAL_HEADER or head[:4] != b"PK\x03\x04":
                raise ValueError("no local file header at its offset")
            name_len, extra_len = struct.unpack("<HH", head[26:30])
            start = info.header_offset + _LOCAL_HEADER + name_len + extra_len
            f.seek(start)
            shape, fortran, dtype = _read_header(f)
            offset = f.tell()
    except (OSError, ValueError, struct.error) as exc:
        raise _fail(f"{where} is not a readable .npy member ({type(exc).__name__}: "
                    f"{str(exc).splitlines()[0][:120] if str(exc) else ''})") from None
    if dtype.hasobject:
        raise _fail(f"{where} holds Python objects (a pickle); save plain arrays")
    if fortran and len(shape) > 1:
        raise _fail(f"{where} is stored in Fortran order; save it C-ordered (np.ascontiguousarray)")
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if offset - start + nbytes != info.file_size:
        raise _fail(f"{where} is truncated or damaged ({info.file_size} bytes stored, "
                    f"{offset - start + nbytes} expected from its header)")
    if nbytes == 0:
        raise _fail(f"{where} holds an empty array")
    return np.memmap(path, dtype=dtype, mode="r", shape=shape, order="C", offset=offset)


def _read_header(f) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, fortran_order, dtype) of the ``.npy`` header at ``f``'s position."""
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(f)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(f)
    return np.lib.format._read_array_header(f, version)  # 3.0 (utf-8 names): no public reader


def _check_pair(s: Shard) -> Shard:
    im, lab = s.images, s.labels
    if im.dtype != np.uint8 or im.ndim != 4:
        raise _fail(f"{s.name}: image must be uint8 (N, H, W, C), got {im.dtype} {tuple(im.shape)}")
    if lab.ndim != 1 or not np.issubdtype(lab.dtype, np.integer):
        raise _fail(f"{s.name}: label must be integers (N,), got {lab.dtype} {tuple(lab.shape)}")
    if lab.shape[0] != im.shape[0]:
        raise _fail(f"{s.name}: {im.shape[0]} images but {lab.shape[0]} labels")
    return s


# ---------------------------------------------------------------------------------------
# unpacking a compressed set


def unpack(src: Path, out: Path, chunk_bytes: int = 1 << 26) -> list[Path]:
    """Stream the ``image`` and ``label`` members of ``src`` (compressed or not) into
    ``out/NAME_image.npy`` and ``out/NAME_label.npy``, ``chunk_bytes`` at a time (never the
    whole array in memory). Returns the two files written."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    with zipfile.ZipFile(src) as zf:
        for key in ("image", "label"):
            target = out / f"{src.stem}_{key}.npy"
            with zf.open(f"{key}.npy") as member:
                shape, fortran, dtype = _read_header(member)
                if fortran or dtype.hasobject:
                    raise _fail(f"{src}[{key}.npy] must be a plain C-ordered array")
                arr = np.lib.format.open_memmap(target, mode="w+", dtype=dtype, shape=shape)
                flat = arr.reshape(-1).view(np.uint8)
                pos = 0
                while pos < flat.shape[0]:
                    data = member.read(min(chunk_bytes, flat.shape[0] - pos))
                    if not data:
                        raise _fail(f"{src}[{key}.npy] ends early")
                    flat[pos:pos + len(data)] = np.frombuffer(data, dtype=np.uint8)
                    pos += len(data)
                arr.flush()
                del arr, flat
            written.append(target)
    return written


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[0] != "unpack":
        print("usage: python -m adaptrain.data.extra unpack SRC.npz DIR", file=sys.stderr)
        return 2
    for path in unpack(Path(argv[1]), Path(argv[2])):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
