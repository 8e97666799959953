"""A batch loader over a whole split held on the training device, plus generated extra images.

The uint8 images move to the device once; every batch is one gather (plus the augmentation,
folded into the same gather) and a conversion to float32 on [0, 1]. Batches come as
``(x, y, idx)`` where ``idx`` indexes the loader's own images, so that strategies and
objectives can keep per-sample state.

Randomness comes from ``generator`` only, all of it drawn when an epoch starts (``iter``), in a
fixed order: the permutation (if ``shuffle``), then the extra images (with ``extra``), then the
crop offsets (``crop_flip``), then the flip decisions (``flip`` / ``crop_flip``). The same
generator state therefore gives the same epoch, whatever else uses the generator between
batches; a resumed run restores that state and so continues the same sequence.

Extra data (``extra``, :class:`ExtraData`, memory-mapped on the host): every full batch holds
E = ``extra_rows(extra_fraction, batch_size)`` generated rows and R = B - E real ones, spread
evenly through the batch (so every contiguous shard holds its share); an epoch is one pass
over the real images (ceil(n / R) batches), the last batch keeping the share (its r real rows
with round(r E / R) extra). The epoch's extra images are drawn without replacement (several
permutations in a row when it needs more than the set holds); extra image j is index n + j.
Only the rows a rank holds are read from disk.

Sharding (``rank`` of ``world_size``): ``batch_size`` is the *global* batch; every rank draws
the same full-epoch numbers, cuts the same global batches and yields its contiguous rows
``rows(b)`` of each, so the data order does not depend on the world size.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from ..threat import Rows
from .extra import ExtraData, extra_rows

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
        extra: ExtraData | None = None,
        extra_fraction: float = 0.0,
    ) -> None:
        if x.dtype != torch.uint8 or x.dim() != 4:
            raise ValueError(f"x must be uint8 (N, C, H, W), got {x.dtype} {tuple(x.shape)}")
        if y.dim() != 1 or y.shape[0] != x.shape[0]:
            raise ValueError(f"y must have shape ({x.shape[0]},), got {tuple(y.shape)}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if augment not in AUGMENTATIONS:
            raise ValueError(f"augment must be one of {', '.join(AUGMENTATIONS)}, got {augment!r}")
        if (shuffle or augment != "none" or extra is not None) and generator is None:
            raise ValueError("a generator is required when shuffle is on, augment is not 'none' "
                             "or extra data is mixed in")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got {rank=} {world_size=}")
        channels, height, width = (int(v) for v in x.shape[1:])
        if augment == "crop_flip" and not 0 <= pad < min(height, width):
            raise ValueError(f"pad must be in [0, {min(height, width) - 1}] for reflect padding")
        e = 0
        if extra is not None:
            e = extra_rows(extra_fraction, batch_size)
            if not 1 <= e < batch_size:
                raise ValueError(f"extra_fraction {extra_fraction} takes {e} of {batch_size} rows; "
                                 "a batch needs at least one real and one extra row")
            if extra.image_shape != (height, width, channels):
                raise ValueError(f"extra images are (H, W, C) {extra.image_shape}, the real ones "
                                 f"{(height, width, channels)}")
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
        self.extra = extra
        self.extra_per_batch = e  # E: generated rows of a full global batch
        self.real_per_batch = self.batch_size - e  # R
        self._sizes = self._batch_sizes()  # [(real rows, extra rows)] of each global batch

    def _batch_sizes(self) -> list[tuple[int, int]]:
        n, r, e = int(self.x.shape[0]), self.real_per_batch, self.extra_per_batch
        full, rest = divmod(n, r)
        sizes = [(r, e)] * full
        if rest and not self.drop_last:
            sizes.append((rest, (rest * e * 2 + r) // (2 * r)))  # round(rest * e / r), halves up
        return sizes

    def __len__(self) -> int:
        """Global batches per epoch (the same on every rank)."""
        return len(self._sizes)

    @property
    def num_samples(self) -> int:
        """Size of the index space: real images, then every extra image (n + len(extra))."""
        return int(self.x.shape[0]) + (len(self.extra) if self.extra is not None else 0)

    @property
    def images_per_epoch(self) -> int:
        """Rows of all global batches of one epoch (real and extra)."""
        return sum(r + e for r, e in self._sizes)

    def rows(self, b: int) -> Rows:
        """This rank's contiguous rows of global batch ``b``: sizes differ by at most one,
        earlier ranks take the extra rows."""
        r, e = self._sizes[b]
        return Rows.shard(r + e, self.rank, self.world_size)

    def __iter__(self) -> Iterator[Batch]:
        # All random draws happen here, eagerly, before the first batch is produced.
        n = int(self.x.shape[0])
        gen = self.generator
        if self.shuffle:
            assert gen is not None
            order = torch.randperm(n, generator=gen, device=gen.device).to(self.device)
        else:
            order = torch.arange(n, device=self.device)
        chosen = None
        total = n
        if self.extra is not None:
            assert gen is not None
            chosen = self._draw_extra(sum(e for _, e in self._sizes), gen)
            total = self.images_per_epoch
        offsets = flips = None
        if self.augment == "crop_flip":
            assert gen is not None
            offsets = torch.randint(
                0, 2 * self.pad + 1, (total, 2), generator=gen, device=gen.device
            ).to(self.device)
        if self.augment in ("flip", "crop_flip"):
            assert gen is not None
            flips = torch.randint(0, 2, (total,), generator=gen, device=gen.device).to(self.device)
            flips = flips.bool()
        if chosen is None:
            return self._batches(order, offsets, flips)
        return self._mixed_batches(order, chosen, offsets, flips)

    def _draw_extra(self, k: int, gen: torch.Generator) -> Tensor:
        """k extra indices (host, int64): distinct when k <= len(extra), else whole
        permutations in a row (each image ceil or floor of k / len(extra) times)."""
        m = len(self.extra)
        perms = [torch.randperm(m, generator=gen, device=gen.device) for _ in range(-(-k // m))]
        return torch.cat(perms)[:k].cpu()

    def _batches(
        self, order: Tensor, offsets: Tensor | None, flips: Tensor | None
    ) -> Iterator[Batch]:
        bs = self.batch_size
        for b in range(len(self)):
            r = self.rows(b)
            part = slice(b * bs + r.start, b * bs + r.stop)
            idx = order[part]
            xb = self._gather(
                self.x,
                idx,
                None if offsets is None else offsets[part],
                None if flips is None else flips[part],
            )
            yield xb.to(torch.float32).div_(255.0), self.y[idx], idx

    def _mixed_batches(
        self, order: Tensor, chosen: Tensor, offsets: Tensor | None, flips: Tensor | None
    ) -> Iterator[Batch]:
        """Batches of real rows (``order``) and extra rows (``chosen``, in that order)
        interleaved as :func:`spread` places them; extra rows read from disk per batch."""
        assert self.extra is not None
        n, dev = int(self.x.shape[0]), self.device
        is_extra = torch.cat([spread(e, r + e) for r, e in self._sizes])  # host, (T,)
        before = torch.cat([torch.zeros(1, dtype=torch.int64), is_extra.cumsum(0)])
        idx_all = torch.empty(is_extra.shape[0], dtype=torch.int64, device=dev)
        mask = is_extra.to(dev)
        idx_all[~mask] = order[: int((~is_extra).sum())]
        idx_all[mask] = chosen.to(dev) + n
        start = 0
        for b, (r, e) in enumerate(self._sizes):
            rows = self.rows(b)
            lo, hi = start + rows.start, start + rows.stop
            start += r + e
            idx = idx_all[lo:hi]
            m = is_extra[lo:hi]
            at_extra, at_real = m.nonzero().squeeze(1), (~m).nonzero().squeeze(1)
            images, labels = self.extra.read(chosen[int(before[lo]):int(before[hi])].numpy())
            raw = torch.empty((hi - lo, *self.x.shape[1:]), dtype=torch.uint8, device=dev)
            yb = torch.empty(hi - lo, dtype=torch.int64, device=dev)
            at_extra, at_real = at_extra.to(dev), at_real.to(dev)
            raw[at_real] = self.x[idx[at_real]]
            raw[at_extra] = torch.from_numpy(images).permute(0, 3, 1, 2).to(dev)
            yb[at_real] = self.y[idx[at_real]]
            yb[at_extra] = torch.from_numpy(labels).to(dev)
            if offsets is not None or flips is not None:
                raw = self._gather(
                    raw,
                    torch.arange(hi - lo, device=dev),
                    None if offsets is None else offsets[lo:hi],
                    None if flips is None else flips[lo:hi],
                )
            yield raw.to(torch.float32).div_(255.0), yb, idx

    def _gather(
        self, src: Tensor, idx: Tensor, offsets: Tensor | None, flips: Tensor | None
    ) -> Tensor:
        """Images ``src[idx]``, cropped from the reflect-padded image at ``offsets`` and flipped."""
        if offsets is None and flips is None:
            return src[idx]
        _, channels, height, width = src.shape
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
        return src[
            idx[:, None, None, None],
            chan[None, :, None, None],
            rows[:, None, :, None],
            cols[:, None, None, :],
        ]


def spread(e: int, s: int) -> Tensor:
    """Which of ``s`` rows are the ``e`` extra ones, evenly spread (bool (s,)): row i is extra
    when floor((i + 1) e / s) > floor(i e / s), so any contiguous run of k rows holds
    k e / s of them, give or take one."""
    i = torch.arange(s)
    return (i + 1) * e // s > i * e // s


def _reflect(i: Tensor, size: int) -> Tensor:
    i = i.abs()
    return torch.where(i > size - 1, 2 * (size - 1) - i, i)
