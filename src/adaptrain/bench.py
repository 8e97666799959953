"""``adaptrain bench``: what a training epoch of each preset costs on this machine.

Every row is built the way ``adaptrain train`` builds a run (:func:`adaptrain.train.setup`) and
timed through the real :func:`adaptrain.train.train_epoch`, over a training set cut to
``batches`` batches (``data.subset``; the held-out split stays as configured). Warm-up epochs
are not timed; the timed repeats are interleaved across rows (A B C A B C ...), so background
load hits every row alike, and medians are reported. Per row:

* images/s: median and range over the repeats; seconds per epoch: the configured training
  set (the preset's ``data.subset``, or everything left after ``data.val_size``) at that rate;
  ratio: time per image over the first row's;
* forward / backward rows per image through the model (and AWP's proxy), exact, from
  :mod:`adaptrain.profiling`; the backward rows that also computed weight gradients apart;
* efficiency: the pass floor over the measured time per image. Each repeat also times, on one
  batch of a copy of the model, a no-grad forward (t_f), a forward + backward to the input
  with frozen weights (t_in, an attack step) and a train-mode forward + backward to the
  weights (t_w, a training step); floor = ((F - B) t_f + (B - W) t_in + W t_w) / batch, with
  F, B, W the forward, backward and weight-backward rows per image (medians of the costs).

``reference=True`` adds a row for the pattern of most public PGD-AT code (the attack calls
``loss.backward()`` on the whole model, so every attack step also computes weight gradients),
on the first row's config; its floor is PGD-AT's (weight gradients for the training step only).
"""

from __future__ import annotations

import copy
import dataclasses
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml

from . import fileio
from .config import Config, build_config
from .data import load_arrays
from .errors import ConfigError
from .profiling import PassCount, count_passes
from .threads import apply_threads, resolve_threads

COLUMNS = ("row", "preset", "images/s (median)", "spread (min-max)", "s/epoch (images)", "ratio",
           "fwd rows/img", "bwd rows/img", "weight bwd rows/img", "efficiency")
REFERENCE = "reference"  # label of the --reference row


@dataclass
class Entry:
    """One row: a preset (name or YAML path) with its own overrides."""

    label: str
    preset: str
    overrides: list[str] = field(default_factory=list)


@dataclass
class Settings:
    repeats: int = 3  # timed epochs per row
    batches: int = 4  # batches per timed epoch
    warmup: int = 1  # untimed epochs per row before the first timed one
    epoch: int = 0  # the (0-based) training epoch the timed epochs stand for
    threads: int | str | None = None  # None / "auto": adaptrain.threads' default
    device: str | None = None  # None: each config's own
    reference: bool = False


def read_plan(path: Path) -> tuple[list[Entry], list[str]]:
    """A bench plan: ``{common: [k=v, ...], rows: [{label, preset, overrides}, ...]}``."""
    try:
        plan = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError("--plan", f"cannot read {path}: {exc}") from None
    if not isinstance(plan, dict) or not isinstance(plan.get("rows"), list) or not plan["rows"]:
        raise ConfigError("--plan", f"{path}: expected a mapping with a non-empty 'rows' list")
    entries = []
    for i, row in enumerate(plan["rows"]):
        if not isinstance(row, dict) or "preset" not in row:
            raise ConfigError("--plan", f"{path}: row {i + 1} needs a 'preset'")
        entries.append(Entry(str(row.get("label", row["preset"])), str(row["preset"]),
                             [str(o) for o in row.get("overrides", []) or []]))
    return entries, [str(o) for o in plan.get("common", []) or []]


def entries_of(presets: list[str]) -> list[Entry]:
    """Rows for preset names; a preset given twice gets a numbered label."""
    out: list[Entry] = []
    for p in presets:
        n = sum(e.preset == p for e in out)
        out.append(Entry(p if n == 0 else f"{p}#{n + 1}", p))
    return out


# ---------------------------------------------------------------------------------------
# building the rows


@dataclass
class Row:
    entry: Entry
    cfg: Config
    run: Any  # adaptrain.train.Run
    train_images: int  # the configured training set (for seconds per epoch)
    epoch_fn: Callable[[int], None]
    probe: torch.nn.Module  # a copy of the model for the pass costs
    probe_batch: tuple[torch.Tensor, torch.Tensor]
    needed_weight_rows: float | None = None  # the reference's floor: PGD-AT's
    seconds: list[float] = field(default_factory=list)
    costs: dict[str, list[float]] = field(default_factory=lambda: {"f": [], "in": [], "w": []})
    passes: PassCount | None = None


def _train_size(cfg: Config, cache: dict) -> int:
    d = cfg.data
    key = (d.name, str(d.root), d.download)
    if key not in cache:
        cache[key] = int(load_arrays(d.name, d.root, d.download).x_train.shape[0])
    left = cache[key] - d.val_size
    return min(d.subset, left) if d.subset is not None else left


def _build(entry: Entry, common: list[str], settings: Settings, out: Path, sizes: dict) -> Row:
    from .train import setup, train_epoch

    over = [*entry.overrides, *common] + ([f"device={settings.device}"] if settings.device else [])
    cfg = build_config(entry.preset, over)
    full = _train_size(cfg, sizes)
    timed = min(full, cfg.data.batch_size * settings.batches)
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, subset=timed))
    run = setup(cfg, out / entry.label)
    x, y, _ = next(iter(run.loader))
    probe = copy.deepcopy(run.model)
    if cfg.compile:
        probe = torch.compile(probe, dynamic=True)
    return Row(entry, cfg, run, full, lambda epoch: train_epoch(run, epoch, False), probe, (x, y))


def _reference_row(first: Row, out: Path) -> Row:
    """The common PGD-AT pattern on the first row's config (same init, data, autocast)."""
    from .train import setup

    cfg = first.cfg
    s, norm = cfg.strategy, cfg.attack.get("norm", "linf")
    if not all(k in s for k in ("eps", "step_size", "steps")) or norm != "linf":
        raise ConfigError("--reference", "needs a first preset with an L-inf attack and a strategy "
                          "that sets eps, step_size and steps (e.g. pgd-at)")
    run = setup(cfg, out / REFERENCE)
    eps, alpha, steps = float(s["eps"]), float(s["step_size"]), int(s["steps"])

    def epoch_fn(epoch: int) -> None:
        reference_epoch(run, eps, alpha, steps)

    return Row(Entry(REFERENCE, first.entry.preset), cfg, run, first.train_images, epoch_fn,
               copy.deepcopy(run.model), first.probe_batch, needed_weight_rows=1.0)


def reference_epoch(run: Any, eps: float, alpha: float, steps: int) -> None:
    """PGD-AT as most public code writes it: ``steps`` L-inf sign steps from a uniform start,
    each calling ``loss.backward()`` on the whole model (weight gradients computed and thrown
    away), BatchNorm in eval mode during the attack; then one SGD step on the adversarial batch."""
    model, opt = run.model, run.optimizer
    for x, y, _ in run.loader:
        model.eval()
        delta = (torch.empty_like(x).uniform_(-eps, eps) + x).clamp(0, 1) - x
        for _ in range(steps):
            delta.requires_grad_(True)
            with run.amp():
                loss = F.cross_entropy(model(x + delta).float(), y)
            loss.backward()
            with torch.no_grad():
                moved = (delta + alpha * delta.grad.sign()).clamp(-eps, eps)
                delta = (x + moved).clamp(0, 1) - x
        model.train()
        opt.zero_grad(set_to_none=True)
        with run.amp():
            loss = F.cross_entropy(model(x + delta).float(), y)
        loss.backward()
        opt.step()


# ---------------------------------------------------------------------------------------
# measuring


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def pass_costs(row: Row) -> dict[str, float]:
    """Seconds of one no-grad forward, one forward + input backward (frozen weights) and one
    train-mode forward + weight backward of the model on one batch."""
    from .attacks.engine import frozen_model

    model, (x, y), run = row.probe, row.probe_batch, row.run
    dev = run.device
    out = {}
    model.eval()
    _sync(dev)
    t0 = time.perf_counter()
    with torch.no_grad(), run.amp():
        model(x)
    _sync(dev)
    out["f"] = time.perf_counter() - t0
    with frozen_model(model, "eval"):
        xi = x.detach().clone().requires_grad_(True)
        _sync(dev)
        t0 = time.perf_counter()
        with run.amp():
            loss = F.cross_entropy(model(xi).float(), y, reduction="sum")
        torch.autograd.grad(loss, xi)
        _sync(dev)
        out["in"] = time.perf_counter() - t0
    model.train()
    model.zero_grad(set_to_none=True)
    _sync(dev)
    t0 = time.perf_counter()
    with run.amp():
        loss = F.cross_entropy(model(x).float(), y)
    loss.backward()
    _sync(dev)
    out["w"] = time.perf_counter() - t0
    model.zero_grad(set_to_none=True)
    return out


@contextmanager
def counted(row: Row) -> Iterator[None]:
    """Count passes through the model and AWP's proxy (same architecture) during the block,
    on the uncompiled model (hooks do not see through torch.compile)."""
    run = row.run
    models = [run.model] + ([run.awp.proxy] if getattr(run, "awp", None) is not None else [])
    net = run.net
    run.net = run.model
    try:
        with ExitStack() as stack:
            counts = [stack.enter_context(count_passes(m)) for m in models]
            yield
        row.passes = PassCount(sum(c.forward_rows for c in counts),
                               sum(c.backward_rows for c in counts),
                               sum(c.weight_backward_rows for c in counts))
    finally:
        run.net = net


def timed_epoch(row: Row, epoch: int) -> float:
    dev = row.run.device
    _sync(dev)
    t0 = time.perf_counter()
    row.epoch_fn(epoch)
    _sync(dev)
    return time.perf_counter() - t0


def machine(device: torch.device) -> dict[str, Any]:
    from .rundir import versions

    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu or platform.processor() or platform.machine(), "platform": platform.platform(),
            "threads": torch.get_num_threads(), "interop_threads": torch.get_num_interop_threads(),
            "device": str(device), **versions()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def loadavg() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def bench(entries: list[Entry], common: list[str], settings: Settings,
          log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Measure every entry (with ``common`` overrides); returns the JSON-ready result."""
    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    if not entries:
        raise ConfigError("bench", "give at least one preset")
    labels = [e.label for e in entries]
    if len(set(labels)) != len(labels) or REFERENCE in labels:
        raise ConfigError("bench", f"row labels must be unique and not {REFERENCE!r}: {labels}")
    try:
        threads = apply_threads(resolve_threads(settings.threads))
    except ValueError as exc:
        raise ConfigError("--threads", str(exc)) from None
    load_start = loadavg()
    started = time.time()
    sizes: dict = {}
    with tempfile.TemporaryDirectory(prefix="adaptrain-bench-") as tmp:
        rows = [_build(e, common, settings, Path(tmp), sizes) for e in entries]
        if settings.reference:
            rows.append(_reference_row(rows[0], Path(tmp)))
        # warm-up epochs are the W epochs before the timed one (all 0 when it is 0); pass
        # counts come from the last warm-up when that is the timed epoch, else from one more
        E, W = settings.epoch, settings.warmup
        count_in_warmup = W > 0 and E == 0  # the last warm-up epoch is max(0, E - 1)
        for w in range(W):
            for row in rows:
                with counted(row) if count_in_warmup and w == W - 1 else nullcontext():
                    row.epoch_fn(max(0, E - W + w))
            log(f"warm-up {w + 1}/{W} done")
        for r in range(settings.repeats):
            for row in rows:
                for k, v in pass_costs(row).items():
                    row.costs[k].append(v)
                row.seconds.append(timed_epoch(row, E))
            log(f"repeat {r + 1}/{settings.repeats}: " + ", ".join(
                f"{row.entry.label} {row.run.loader.images_per_epoch / row.seconds[-1]:.1f} img/s"
                for row in rows))
        if not count_in_warmup:
            for row in rows:
                with counted(row):
                    row.epoch_fn(E)
    result = {
        "machine": machine(rows[0].run.device),
        "load": {"start": load_start, "end": loadavg()},
        "settings": {**dataclasses.asdict(settings), "threads": threads, "common_overrides": common,
                     "wall_s": round(time.time() - started, 1)},
        "rows": [_summarise(row) for row in rows],
    }
    base = result["rows"][0]["s_per_image"]
    for r in result["rows"]:
        r["ratio"] = r["s_per_image"] / base
    return result


def _summarise(row: Row) -> dict[str, Any]:
    images = row.run.loader.images_per_epoch
    ips = [images / s for s in row.seconds]
    med = statistics.median(ips)
    assert row.passes is not None
    f = row.passes.forward_rows / images
    b = row.passes.backward_rows / images
    w = row.passes.weight_backward_rows / images
    wf = w if row.needed_weight_rows is None else row.needed_weight_rows
    cost = {k: statistics.median(v) for k, v in row.costs.items()}
    bs = int(row.probe_batch[0].shape[0])
    floor = (max(0.0, f - b) * cost["f"] + max(0.0, b - wf) * cost["in"] + wf * cost["w"]) / bs
    return {
        "label": row.entry.label, "preset": row.entry.preset, "overrides": row.entry.overrides,
        "images_per_s": med, "images_per_s_min": min(ips), "images_per_s_max": max(ips),
        "spread": (max(ips) - min(ips)) / med, "images_per_s_all": ips,
        "s_per_image": 1.0 / med, "train_images": row.train_images,
        "s_per_epoch": row.train_images / med,
        "timed_images": images, "batch_size": row.cfg.data.batch_size,
        "forward_rows_per_image": f, "backward_rows_per_image": b,
        "weight_backward_rows_per_image": w,
        "floor_weight_rows_per_image": wf,
        "pass_cost_s": cost, "pass_cost_batch": bs,
        "floor_s_per_image": floor, "efficiency": floor * med,
    }


# ---------------------------------------------------------------------------------------
# output


def _num(v: float) -> str:
    return f"{v:.4g}"


def markdown(result: dict[str, Any]) -> str:
    m, s, load = result["machine"], result["settings"], result["load"]
    gpu = f" ({m['gpu']})" if "gpu" in m else ""
    lines = [
        "# adaptrain bench", "",
        f"- machine: {m['cpu']}; threads {m['threads']}; torch {m['torch']}; device {m['device']}{gpu}",
        f"- load average (1, 5, 15 min): start {load['start']}, end {load['end']}",
        f"- {s['repeats']} timed repeats of {s['batches']} batches per row (interleaved), "
        f"{s['warmup']} warm-up, epoch {s['epoch']}; overrides: {' '.join(s['common_overrides']) or '-'}",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    for r in result["rows"]:
        cells = [r["label"], r["preset"] + ("" if not r["overrides"] else " " + " ".join(r["overrides"])),
                 f"{r['images_per_s']:.1f}", f"{r['images_per_s_min']:.1f}-{r['images_per_s_max']:.1f}",
                 f"{r['s_per_epoch']:.1f} ({r['train_images']})", f"{r['ratio']:.3f}",
                 _num(r["forward_rows_per_image"]), _num(r["backward_rows_per_image"]),
                 _num(r["weight_backward_rows_per_image"]), f"{r['efficiency']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    if any(r["label"] == REFERENCE for r in result["rows"]):
        lines += ["", f"`{REFERENCE}`: PGD-AT on the first row's config as most public code writes it "
                  "(`loss.backward()` on the whole model at every attack step); its floor is PGD-AT's."]
    return "\n".join(lines) + "\n"


def write(result: dict[str, Any], out: Path) -> tuple[Path, Path]:
    import json

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    j, md = out / "bench.json", out / "bench.md"
    fileio.write_file(j, json.dumps(result, indent=2, default=str) + "\n")
    fileio.write_file(md, markdown(result))
    return j, md

