"""The run directory's tables: metrics.csv, strategy.csv, summary.json, and the epoch log line.

``summary.json`` is a contract other tools read: ``best_epoch``, ``best`` / ``last`` with
``epoch``, ``clean_acc`` and ``robust_acc`` (fractions; with a moving average of the weights
also its ``ema_clean_acc`` and ``ema_robust_acc``), ``wall_time_s``, ``versions``. Every
file is written to a temporary name and renamed, so a reader never sees half a file.
"""

from __future__ import annotations

import csv
import io
import json
import math
import platform
from pathlib import Path
from typing import Any

import torch

from . import __version__, fileio
from .errors import ConfigError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("device", f"{name!r} requested but CUDA is not available")
    return torch.device(name)


def versions() -> dict[str, str]:
    import torchvision

    return {"adaptrain": __version__, "torch": torch.__version__,
            "torchvision": torchvision.__version__, "python": platform.python_version()}


def best_row(history: list[dict[str, Any]], select: str) -> dict[str, Any] | None:
    """The epoch with the best ``select`` accuracy: of the moving average of the weights
    (``ema_`` columns) when the run keeps one, since that is the model it delivers."""
    key = "robust_acc" if select == "robust" else "clean_acc"
    if any(f"ema_{key}" in r for r in history):
        key = f"ema_{key}"
    scored = [r for r in history if key in r]
    return max(scored, key=lambda r: r[key]) if scored else None  # first of equals wins


PRESET_MARK = "# preset: "  # config.yaml's first line names the preset the run was built from


def previous_preset(out: Path) -> str:
    """The preset an earlier session of the run was built from ("" if none): summary.json's
    record, else the first line of config.yaml (written before anything else)."""
    try:
        preset = json.loads((out / "summary.json").read_text()).get("preset", "")
        if isinstance(preset, str) and preset:
            return preset
    except (OSError, ValueError, AttributeError):
        pass
    try:
        first = (out / "config.yaml").read_text().split("\n", 1)[0]
    except OSError:
        return ""
    return first[len(PRESET_MARK):].strip() if first.startswith(PRESET_MARK) else ""


def epoch_line(row: dict[str, Any], epochs: int, attack: str, strategy: str = "",
               eta: str = "") -> str:
    """One epoch in one line; ``strategy``: the strategy's summary (its adaptive state),
    ``eta``: the time left, both shown when not empty."""
    s = (f"epoch {row['epoch']}/{epochs}  lr {row['lr']:.4g}  loss {row['train_loss']:.4f}  "
         f"train acc {row['train_acc']:.3f}  {row['train_time_s']:.1f}s")
    if "clean_acc" in row:
        s += f"  |  val clean {row['clean_acc']:.3f}  {attack} {row['robust_acc']:.3f}"
    if "ema_clean_acc" in row:
        s += f"  |  ema clean {row['ema_clean_acc']:.3f}  {attack} {row['ema_robust_acc']:.3f}"
    if strategy:
        s += f"  |  {strategy}"
    if eta:
        s += f"  |  {eta}"
    return s


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    fields: list[str] = []
    for r in rows:
        fields += [k for k in r if k not in fields]
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=fields)
    w.writeheader()
    w.writerows(rows)
    fileio.write_file(path, buf.getvalue())


def write_outputs(out: Path, history: list[dict[str, Any]], telemetry: list[dict[str, Any]], *,
                  select: str, preset: str, finished: bool, eval_info: dict[str, Any],
                  wall_time: float, device: torch.device,
                  precision: dict[str, bool] | None = None) -> dict[str, Any]:
    if history:
        _write_csv(out / "metrics.csv", history)
    if any(len(t) > 1 for t in telemetry):
        _write_csv(out / "strategy.csv", telemetry)
    best = best_row(history, select)
    last = next((r for r in reversed(history) if "clean_acc" in r), None)

    def pick(r: dict[str, Any] | None) -> dict[str, Any] | None:
        if r is None:
            return None
        keys = ("clean_acc", "robust_acc", "ema_clean_acc", "ema_robust_acc")
        return {"epoch": r["epoch"], **{k: r[k] for k in keys if k in r}}

    summary = {
        "preset": preset, "finished": finished, "epochs_completed": len(history),
        "best_epoch": None if best is None else best["epoch"], "best": pick(best),
        "last": pick(last), "eval": eval_info, "wall_time_s": round(wall_time, 3),
        "device": str(device), "precision": precision, "versions": versions(),
    }
    fileio.write_file(out / "summary.json", json.dumps(summary, indent=2, default=_json_default))
    return summary


def _json_default(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    raise TypeError(type(v).__name__)
