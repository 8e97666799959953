"""A batch loader over a whole split held on the training device.

The uint8 images move to the device once; every batch is one gather (plus the augmentation,
folded into the same gather) and a conversion to float32 on [0, 1]. Batches come as
``(x, y, idx)`` where ``idx`` indexes the loader's own images, so that strategies and
objectives can keep per-sample state.

Randomness comes from ``generator`` only, all of it drawn when an epoch starts (``iter``), in a
fixed order: the permutation (if ``shuffle``), then the crop offsets (``crop_flip``), then the
flip decisions (``flip`` / ``crop_flip``). The same generator state therefore gives the same
epoch, whatever else uses the generator between batches.

Sharding (``rank`` of ``world_size``): ``batch_size`` is the *global* batch; every rank draws
the same full-epoch numbers, cuts the same global batches and yields its contiguous rows
``rows(b)`` of each, so the data order does not depend on the world size.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from ..threat import Rows

AUGMENTATIONS = ("none", "flip", "crop_flip")

Batch = tuple[Tensor, Tensor, Tensor]


class BatchLoader:
    """Yields ``(x float32 (b,C,H,W) on [0,1], y int64 (b,), idx int64 (b,))`` on ``device``:
    this rank's b rows of each global batch (all B of them in a single process)."""

    def __init__(
        self,
        x: Tensor,
        y: Tensor,
        *,
        batch_size: int,
        device: torch.device | str = "cpu",
        shuffle: bool = False,
        augment: str = "none",
        generator: torch.Generator | None = None,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
        pad: int = 4,
    ) -> None:
        if x.dtype != torch.uint8 or x.dim() != 4:
            raise ValueError(f"x must be uint8 (N, C, H, W), got {x.dtype} {tuple(x.shape)}")
        if y.dim() != 1 or y.shape[0] != x.shape[0]:
            raise ValueError(f"y must have shape ({x.shape[0]},), got {tuple(y.shape)}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if augment not in AUGMENTATIONS:
            raise ValueError(f"augment must be one of {', '.join(AUGMENTATIONS)}, got {augment!r}")
        if (shuffle or augment != "none") and generator is None:
            raise ValueError("a generator is required when shuffle is on or augment is not 'none'")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got {rank=} {world_size=}")
        height, width = int(x.shape[2]), int(x.shape[3])
        if augment == "crop_flip" and not 0 <= pad < min(height, width):
            raise ValueError(f"pad must be in [0, {min(height, width) - 1}] for reflect padding")
        self.device = torch.device(device)
        self.x = x.to(self.device)
        self.y = y.to(self.device, torch.int64)
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.augment = augment
        self.generator = generator
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.drop_last = drop_last
        self.pad = int(pad)

    def __len__(self) -> int:
        """Global batches per epoch (the same on every rank)."""
        n = int(self.x.shape[0])
        if self.drop_last:
            return n // self.batch_size
        return -(-n // self.batch_size)

    def rows(self, b: int) -> Rows:
        """This rank's contiguous rows of global batch ``b``: sizes differ by at most one,
        earlier ranks take the extra rows."""
        total = min(self.batch_size, int(self.x.shape[0]) - b * self.batch_size)
        return Rows.shard(total, self.rank, self.world_size)

    def __iter__(self) -> Iterator[Batch]:
        # All random draws happen here, eagerly, before the first batch is produced.
        n = int(self.x.shape[0])
        gen = self.generator
        if self.shuffle:
            assert gen is not None
            order = torch.randperm(n, generator=gen, device=gen.device).to(self.device)
        else:
            order = torch.arange(n, device=self.device)
        offsets = flips = None
        if self.augment == "crop_flip":
            assert gen is not None
            offsets = torch.randint(
                0, 2 * self.pad + 1, (n, 2), generator=gen, device=gen.device
            ).to(self.device)
        if self.augment in ("flip", "crop_flip"):
            assert gen is not None
            flips = torch.randint(0, 2, (n,), generator=gen, device=gen.device).to(self.device)
            flips = flips.bool()
        return self._batches(order, offsets, flips)

    def _batches(
        self, order: Tensor, offsets: Tensor | None, flips: Tensor | None
    ) -> Iterator[Batch]:
        bs = self.batch_size
        for b in range(len(self)):
            r = self.rows(b)
            part = slice(b * bs + r.start, b * bs + r.stop)
            idx = order[part]
            xb = self._gather(
                idx,
                None if offsets is None else offsets[part],
                None if flips is None else flips[part],
            )
            yield xb.to(torch.float32).div_(255.0), self.y[idx], idx

    def _gather(self, idx: Tensor, offsets: Tensor | None, flips: Tensor | None) -> Tensor:
        """Images ``idx``, cropped from the reflect-padded image at ``offsets`` and flipped."""
        if offsets is None and flips is None:
            return self.x[idx]
        _, channels, height, width = self.x.shape
        rows = torch.arange(height, device=self.device).expand(idx.shape[0], height)
        cols = torch.arange(width, device=self.device).expand(idx.shape[0], width)
        if offsets is not None:
            # Position in the padded image (offset + i) minus the padding, then reflected
            # (no edge repeat: -1 -> 1, H -> H - 2), as torch's "reflect" padding does.
            rows = _reflect(rows + offsets[:, :1] - self.pad, height)
            cols = _reflect(cols + offsets[:, 1:] - self.pad, width)
        if flips is not None:
            cols = torch.where(flips[:, None], cols.flip(1), cols)
        chan = torch.arange(channels, device=self.device)
        return self.x[
            idx[:, None, None, None],
            chan[None, :, None, None],
            rows[:, None, :, None],
            cols[:, None, None, :],
        ]


def _reflect(i: Tensor, size: int) -> Tensor:
    i = i.abs()
    return torch.where(i > size - 1, 2 * (size - 1) - i, i)
