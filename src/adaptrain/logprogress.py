"""Progress a person can follow: a tqdm bar on a terminal, bounded-rate lines in a log.

When stdout is a terminal, training and evaluation keep tqdm's bars. When it is not (a file,
a pipe, a batch system's log), a bar prints nothing useful, so a plain line goes to stdout at
most once every ``EVERY`` seconds (the first one ``EVERY`` seconds after the start):

    epoch 3/110: 120/383 batch (31%), 412.3 img/s, ETA 1m28s

rate = images done / seconds since the start; ETA = units left / units per second. The
interval is the module constant ``EVERY`` (tests shrink it), or ``$ADAPTRAIN_PROGRESS_EVERY``
seconds when set (for subprocesses). A bar draws no random numbers and touches no tensors.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TextIO, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")

EVERY = 30.0  # seconds between two progress lines when stdout is not a terminal


def interval() -> float:
    """Seconds between two plain lines: ``$ADAPTRAIN_PROGRESS_EVERY`` or :data:`EVERY`."""
    raw = os.environ.get("ADAPTRAIN_PROGRESS_EVERY", "")
    try:
        return max(float(raw), 0.0) if raw.strip() else EVERY
    except ValueError:
        return EVERY


def duration(seconds: float) -> str:
    """``3725`` -> ``1h02m``, ``185`` -> ``3m05s``, ``12.4`` -> ``12s``."""
    s = int(round(max(seconds, 0.0)))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


def is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # replaced or closed streams
        return False


class Lines:
    """A bar's interface (``update``, ``close``) printing one line every ``every`` seconds."""

    def __init__(self, total: int, desc: str, unit: str = "img", stream: TextIO | None = None,
                 every: float | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.total, self.desc, self.unit = int(total), desc, unit
        self.stream = stream
        self.every = interval() if every is None else every
        self.clock = clock
        self.start = self.last = clock()
        self.done = 0
        self.images = 0

    def update(self, n: int = 1, images: int | None = None) -> None:
        """``n`` more units done, holding ``images`` images (default: the units are images)."""
        self.done += n
        self.images += n if images is None else images
        now = self.clock()
        if now - self.last >= self.every:
            self.last = now
            print(self.line(now), file=self.stream or sys.stdout, flush=True)

    def line(self, now: float) -> str:
        elapsed = max(now - self.start, 1e-9)
        text = f"{self.desc}: {self.done}/{self.total} {self.unit}"
        if self.total > 0:
            text += f" ({100 * self.done / self.total:.0f}%)"
        text += f", {self.images / elapsed:.1f} img/s"
        if 0 < self.done <= self.total:
            text += f", ETA {duration((self.total - self.done) * elapsed / self.done)}"
        return text

    def close(self) -> None:
        return None


class _Bar:
    """tqdm behind the same ``update(n, images)`` as :class:`Lines`."""

    def __init__(self, bar: tqdm) -> None:
        self.bar = bar

    def update(self, n: int = 1, images: int | None = None) -> None:
        self.bar.update(n)

    def close(self) -> None:
        self.bar.close()


def progress(total: int, desc: str, enabled: bool | None, unit: str = "img") -> Lines | _Bar:
    """``enabled`` False: no output; True: a tqdm bar; None: a tqdm bar when stdout is a
    terminal (tqdm itself hides it when stderr is not), else :class:`Lines`."""
    if enabled is None and not is_terminal(sys.stdout):
        return Lines(total, desc, unit)
    return _Bar(tqdm(total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True,
                     disable=True if enabled is False else None))


def track(items: Iterable[T], total: int, desc: str, enabled: bool | None,
          images: Callable[[T], int] | None = None, unit: str = "batch") -> Iterator[T]:
    """Yield ``items``, counting each as done once the caller asks for the next one (i.e.
    after its work); ``images(item)`` is how many images it held, for the rate.

    ``items`` is iterated exactly once (``iter(items)`` here, and tqdm wraps that iterator):
    each ``iter`` of the training loader draws an epoch's shuffle, and tqdm's constructor
    calls ``iter`` on what it wraps, so wrapping the loader itself drew a second, discarded
    epoch and tied the data stream to tqdm's internals."""
    lines = enabled is None and not is_terminal(sys.stdout)
    wrapped = tqdm(iter(items), total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True,
                   disable=True if enabled is False or lines else None)
    plain = Lines(total, desc, unit) if lines else None
    try:
        for item in wrapped:
            yield item
            if plain is not None:
                plain.update(1, None if images is None else images(item))
    finally:
        wrapped.close()
