"""Is the loader the bottleneck with generated extra data? Images/s of ``BatchLoader`` alone.

Usage (from the repository root; needs ~3 GB free under --dir, removed at the end):

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/extra_loader.py --dir /tmp --extra 1000000

Writes an uncompressed ``.npz`` of ``--extra`` random uint8 (N, 32, 32, 3) images with labels
(streamed: never the whole array in memory), maps it with ``ExtraData``, and times whole
epochs of a loader over 49,000 in-memory CIFAR-sized real images, batch 128, extra_fraction
0.7, crop_flip, on the CPU: once with the file in the page cache (as just written), once after
``posix_fadvise(DONTNEED)`` dropped this file's cached pages (reads from disk). JSON to stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import torch

from adaptrain.data import BatchLoader
from adaptrain.data.extra import ExtraData


def write_npz(path: Path, n: int, chunk: int = 65536) -> None:
    """``image`` (n, 32, 32, 3) uint8 and ``label`` (n,) int64, random, stored uncompressed."""
    rng = np.random.default_rng(0)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, shape, dtype in (("image", (n, 32, 32, 3), np.uint8), ("label", (n,), np.int64)):
            with zf.open(f"{name}.npy", "w", force_zip64=True) as f:
                header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                          "fortran_order": False, "shape": shape}
                np.lib.format.write_array_header_2_0(f, header)
                for lo in range(0, n, chunk):
                    k = min(chunk, n - lo)
                    part = (rng.integers(0, 256, (k, *shape[1:]), dtype=np.uint8) if name == "image"
                            else rng.integers(0, 10, k).astype(np.int64))
                    f.write(part.tobytes())


def time_epoch(loader: BatchLoader, batches: int) -> tuple[float, int]:
    t0 = time.perf_counter()
    seen = 0
    for i, (x, _, _) in enumerate(loader):
        seen += x.shape[0]
        if i + 1 == batches:
            break
    return time.perf_counter() - t0, seen


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", default="/tmp")
    ap.add_argument("--extra", type=int, default=1_000_000)
    ap.add_argument("--real", type=int, default=49_000)
    ap.add_argument("--batches", type=int, default=0, help="per timing (0: a whole epoch)")
    args = ap.parse_args()
    path = Path(args.dir) / f"adaptrain-extra-bench-{os.getpid()}.npz"
    try:
        t0 = time.perf_counter()
        write_npz(path, args.extra)
        written = time.perf_counter() - t0
        print(f"wrote {path} ({path.stat().st_size / 1e9:.2f} GB) in {written:.0f} s", file=sys.stderr)
        data = ExtraData(path)
        x = torch.randint(0, 256, (args.real, 3, 32, 32), dtype=torch.uint8)
        y = torch.randint(0, 10, (args.real,))
        out = {"extra_images": len(data), "real_images": args.real, "batch_size": 128,
               "extra_fraction": 0.7, "threads": torch.get_num_threads(), "runs": {}}
        for cache in ("warm", "cold"):
            if cache == "cold":
                fd = os.open(path, os.O_RDONLY)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                os.close(fd)
            loader = BatchLoader(x, y, batch_size=128, shuffle=True, augment="crop_flip",
                                 generator=torch.Generator().manual_seed(0), extra=data,
                                 extra_fraction=0.7)
            batches = args.batches or len(loader)
            seconds, seen = time_epoch(loader, batches)
            out["runs"][cache] = {"batches": batches, "images": seen, "seconds": round(seconds, 2),
                                  "images_per_s": round(seen / seconds, 1)}
            print(f"{cache}: {seen / seconds:.0f} images/s", file=sys.stderr)
        print(json.dumps(out, indent=1))
    finally:
        path.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
