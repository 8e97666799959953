"""Live views of a run: TensorBoard scalars and histograms (``log.tensorboard``), W&B (``log.wandb``).

RUN/metrics.csv and RUN/strategy.csv stay the source of truth; these are copies to watch a
run while it trains. The loop calls :meth:`LiveLog.epoch` once per epoch, after the tables
and the checkpoint are written, with the epoch number as the step:

- ``metrics/<column>``: every number of the epoch's metrics.csv row (lr, losses, accuracies
  as fractions, seconds),
- ``strategy/<column>``: every number of the strategy's telemetry (strategy.csv),
- the histogram ``strategy/<name>`` of every group of ``<name>_share_<k>`` columns: the
  per-sample distribution of e.g. eps over the budgets k (in the strategy's own units, 1/255
  for CIFAR presets).

TensorBoard writes under RUN/tensorboard/; a resumed run drops events at or after its first
new epoch (``purge_step``) and appends. A logger that fails (a full disk, a lost W&B
connection) prints one warning and switches itself off: the run goes on. Rank 0 only.
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
import os
import re
import sys
from pathlib import Path
from typing import Any

from .errors import ConfigError

TB_DIR = "tensorboard"
_SHARE = re.compile(r"^(?P<name>.+)_share_(?P<k>-?\d+(?:\.\d+)?)$")


def check_available(tensorboard: bool, wandb: bool) -> None:
    """Config validation: a switched-on logger whose package is missing is one line naming it."""
    if tensorboard and importlib.util.find_spec("tensorboard") is None:
        raise ConfigError("log.tensorboard", "needs the tensorboard package: "
                          "pip install 'adaptrain[tensorboard]' (or set log.tensorboard=false)")
    if wandb and importlib.util.find_spec("wandb") is None:
        raise ConfigError("log.wandb", "needs the wandb package, which is not installed: "
                          "pip install wandb (or set log.wandb=false)")


def numbers(row: dict[str, Any]) -> dict[str, float]:
    """The finite numeric entries of a table row (booleans as 0/1; text and NaN skipped)."""
    out = {}
    for k, v in row.items():
        if isinstance(v, (bool, int, float)) and math.isfinite(float(v)):
            out[k] = float(v)
    return out


def share_groups(telemetry: dict[str, Any]) -> dict[str, tuple[list[float], list[float]]]:
    """``{"eps": ([3, 4, ...], [0.1, 0.2, ...])}`` from ``eps_share_3``, ``eps_share_4``, ...
    (values k sorted, with their shares)."""
    groups: dict[str, list[tuple[float, float]]] = {}
    for key, v in numbers(telemetry).items():
        m = _SHARE.match(key)
        if m:
            groups.setdefault(m["name"], []).append((float(m["k"]), v))
    return {name: ([k for k, _ in sorted(kv)], [s for _, s in sorted(kv)])
            for name, kv in groups.items()}


class _TensorBoard:
    def __init__(self, out: Path, start_epoch: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        # purge_step: events a crashed session wrote after its last checkpoint are dropped
        self.writer = SummaryWriter(str(out / TB_DIR), purge_step=start_epoch + 1 if start_epoch else None)

    def epoch(self, step: int, row: dict[str, Any], telemetry: dict[str, Any]) -> None:
        w = self.writer
        for k, v in numbers(row).items():
            if k != "epoch":
                w.add_scalar(f"metrics/{k}", v, step)
        for k, v in numbers(telemetry).items():
            if k != "epoch":
                w.add_scalar(f"strategy/{k}", v, step)
        for name, (ks, shares) in share_groups(telemetry).items():
            total = sum(shares)
            if total <= 0:
                continue
            mean = sum(k * s for k, s in zip(ks, shares, strict=True)) / total
            used = [k for k, s in zip(ks, shares, strict=True) if s > 0]
            # one bucket per value k (right edge halfway to the next); counts are the shares
            edges = [(a + b) / 2 for a, b in zip(ks, ks[1:], strict=False)] + [ks[-1] + 0.5]
            w.add_histogram_raw(f"strategy/{name}", min=min(used), max=max(used), num=total,
                                sum=mean * total,
                                sum_squares=sum(k * k * s for k, s in zip(ks, shares, strict=True)),
                                bucket_limits=edges, bucket_counts=shares, global_step=step)
        w.flush()  # a kill loses nothing that was logged

    def close(self) -> None:
        self.writer.close()


class _WandB:
    def __init__(self, out: Path, config: dict[str, Any]) -> None:
        import wandb

        # one W&B run per run directory: a resume continues it (the id is the folder's hash)
        run_id = hashlib.sha256(str(out.resolve()).encode()).hexdigest()[:16]
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "adaptrain"), name=out.name,
                              id=run_id, dir=str(out), config=config, resume="allow")

    def epoch(self, step: int, row: dict[str, Any], telemetry: dict[str, Any]) -> None:
        data = {f"metrics/{k}": v for k, v in numbers(row).items() if k != "epoch"}
        data |= {f"strategy/{k}": v for k, v in numbers(telemetry).items() if k != "epoch"}
        self.run.log(data, step=step)

    def close(self) -> None:
        self.run.finish()


class LiveLog:
    """The run's live loggers behind one call per epoch; none switched on: does nothing."""

    def __init__(self, out: Path, *, tensorboard: bool = False, wandb: bool = False,
                 start_epoch: int = 0, epochs: int = 0, config: dict[str, Any] | None = None) -> None:
        self.epochs = epochs
        self.sinks: dict[str, Any] = {}
        makers = {"TensorBoard": (tensorboard, lambda: _TensorBoard(Path(out), start_epoch)),
                  "W&B": (wandb, lambda: _WandB(Path(out), config or {}))}
        for name, (on, make) in makers.items():
            if on:
                self._guard(name, lambda n=name, m=make: self.sinks.__setitem__(n, m()))

    def epoch(self, row: dict[str, Any], telemetry: dict[str, Any]) -> None:
        """Log one epoch (``row['epoch']`` is the step); after the last, close the loggers."""
        step = int(row["epoch"])
        for name, sink in list(self.sinks.items()):
            self._guard(name, lambda s=sink: s.epoch(step, row, telemetry))
            if step >= self.epochs and name in self.sinks:
                self._guard(name, sink.close)
                self.sinks.pop(name, None)

    def _guard(self, name: str, fn) -> None:
        """Run ``fn``; a failure is one warning and that logger's end (never the run's)."""
        try:
            fn()
        except Exception as exc:
            print(f"WARNING: {name} logging stopped ({type(exc).__name__}: {exc}); "
                  "metrics.csv and strategy.csv are unaffected", file=sys.stderr)
            self.sinks.pop(name, None)
