"""``adaptrain report``: a comparison table and plots from run directories.

Reads what ``adaptrain train`` and ``adaptrain eval`` wrote (summary.json, metrics.csv,
strategy.csv, eval/best.json, eval/last.json) and writes into ``--out`` (default
``<first run>/report``):

* ``report.md``: per run and checkpoint (best, last) the clean / PGD / CW / AutoAttack /
  worst-case accuracy, RD and mean corruption accuracy when evaluated; runs fine-tuned from
  another run (``init_from``) show their clean-accuracy change against it;
* ``learning_curves.png``: validation clean and robust accuracy and training loss per epoch;
* ``eps_curves.png``: accuracy-vs-eps of every evaluated checkpoint that has a curve;
* ``telemetry_<run>.png``: strategy (and objective) telemetry per epoch — columns named
  ``<quantity>_share_<value>`` as stacked areas (e.g. the share of samples at each budget,
  ECAS's Figure 2, LAS-AT's Figure 4), every other column as a line.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Any

from .errors import ConfigError

STANDARD_METRICS = {"epoch", "lr", "train_loss", "train_acc", "train_time_s", "eval_time_s",
                    "clean_acc", "robust_acc"}
_SHARE = re.compile(r"^(?P<q>.+)_share_(?P<v>[-+0-9.eE]+)$")


def read_csv(path: Path) -> list[dict[str, float]]:
    if not path.is_file():
        return []
    rows = []
    with open(path, newline="") as fh:
        for r in csv.DictReader(fh):
            row = {}
            for k, v in r.items():
                try:
                    row[k] = float(v)
                except (TypeError, ValueError):
                    continue
            rows.append(row)
    return rows


class RunInfo:
    def __init__(self, path: Path) -> None:
        if not (path / "summary.json").is_file():
            raise ConfigError("report", f"{path} is not a run directory (no summary.json)")
        self.path = path
        self.summary = json.loads((path / "summary.json").read_text())
        self.name = path.name
        self.metrics = read_csv(path / "metrics.csv")
        self.telemetry = read_csv(path / "strategy.csv")
        self.evals = {}
        for which in ("best", "last"):
            f = path / "eval" / f"{which}.json"
            if f.is_file():
                self.evals[which] = json.loads(f.read_text())
        self.init_from = None
        cfg = path / "config.yaml"
        if cfg.is_file():
            import yaml

            init = (yaml.safe_load(cfg.read_text()) or {}).get("init_from")
            if init:
                p = Path(init)
                while p != p.parent and not (p / "summary.json").is_file():
                    p = p.parent
                self.init_from = p if (p / "summary.json").is_file() else None


def _columns(runs: list[RunInfo]) -> list[str]:
    names: list[str] = []
    for r in runs:
        for ev in r.evals.values():
            names += [k for k in ev["accuracy"] if k not in names]
    order = {"clean": 0}
    return sorted(names, key=lambda k: (order.get(k, 1 if k.startswith(("pgd", "fgsm"))
                                                   else 2 if k.startswith("cw")
                                                   else 3 if k == "aa" else 4), k))


def _pct(v: Any) -> str:
    return "-" if v is None else f"{100 * float(v):.2f}"


def table(runs: list[RunInfo]) -> str:
    cols = [c for c in _columns(runs) if "/" not in c]  # AutoAttack's sub-attacks stay in eval/*.md
    head = ["run", "checkpoint", "epoch", *cols, "worst case", "RD", "corruptions (mean)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in runs:
        for which in ("best", "last"):
            ev = r.evals.get(which)
            s = r.summary.get(which) or {}
            if ev is None:
                cells = [_pct(s.get("clean_acc")) if c == "clean" else "-" for c in cols]
                worst = _pct(s.get("robust_acc"))
                extra = ["-", "-"]
                label = f"{which} (val, {r.summary.get('eval', {}).get('attack', '')})"
            else:
                cells = [_pct(ev["accuracy"].get(c)) for c in cols]
                worst = _pct(ev.get("worst_case"))
                rd = ev.get("rd")
                co = (ev.get("corruptions") or {}).get("mean_all")
                extra = ["-" if rd is None else f"{rd:.4f}", _pct(co)]
                label = f"{which} (test n={ev['n_examples']}, {ev.get('mode', '')})"
            lines.append("| " + " | ".join([r.name, label, str(s.get("epoch", "-")), *cells, worst,
                                            *extra]) + " |")
    return "\n".join(lines)


def init_comparison(runs: list[RunInfo]) -> str:
    """Clean-accuracy change of fine-tuned runs against the run they started from."""
    out = []
    for r in runs:
        if r.init_from is None:
            continue
        base = RunInfo(r.init_from)
        for which in ("best", "last"):
            mine, theirs = r.evals.get(which), base.evals.get("best") or base.evals.get("last")
            if mine is not None and theirs is not None and mine["n_examples"] == theirs["n_examples"]:
                a, b = mine["accuracy"]["clean"], theirs["accuracy"]["clean"]
                src = f"test n={mine['n_examples']}"
            else:
                a = (r.summary.get(which) or {}).get("clean_acc")
                b = (base.summary.get("last") or {}).get("clean_acc")
                src = "validation"
            if a is None or b is None:
                continue
            out.append(f"| {r.name} ({which}) | {base.name} | {_pct(b)} | {_pct(a)} | "
                       f"**{100 * (a - b):+.2f}** | {src} |")
    if not out:
        return ""
    return "\n".join(["## Clean accuracy against the initial model", "",
                      "| run | initialised from | clean before (%) | clean after (%) "
                      "| change (points) | on |",
                      "|---|---|---|---|---|---|", *out])


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_learning_curves(runs: list[RunInfo], path: Path) -> Path | None:
    if not any(r.metrics for r in runs):
        return None
    plt = _plt()
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(10, 3.8))
    for i, r in enumerate(runs):
        color = f"C{i % 10}"
        rows = [m for m in r.metrics if "clean_acc" in m]
        ep = [m["epoch"] for m in rows]
        ax_acc.plot(ep, [m["robust_acc"] for m in rows], color=color, label=f"{r.name} robust")
        ax_acc.plot(ep, [m["clean_acc"] for m in rows], color=color, ls="--", label=f"{r.name} clean")
        ax_loss.plot([m["epoch"] for m in r.metrics], [m["train_loss"] for m in r.metrics],
                     color=color, label=r.name)
    ax_acc.set(xlabel="epoch", ylabel="validation accuracy", ylim=(0, 1))
    ax_loss.set(xlabel="epoch", ylabel="training loss")
    for ax in (ax_acc, ax_loss):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_eps_curves(runs: list[RunInfo], path: Path) -> Path | None:
    from .evaluate.curve import plot_curves

    curves = {f"{r.name} {w}": ev["curve"] for r in runs for w, ev in r.evals.items() if ev.get("curve")}
    return plot_curves(curves, path, "accuracy vs eps") if curves else None


def telemetry_panels(r: RunInfo) -> list[tuple[str, str, list[float], Any]]:
    """Panels (kind, title, epochs, data): 'dist' data is {value: shares}, 'line' a list."""
    panels: list[tuple[str, str, list[float], Any]] = []
    for source, rows, skip in (("strategy", r.telemetry, {"epoch"}),
                               ("objective", r.metrics, STANDARD_METRICS)):
        rows = [m for m in rows if set(m) - skip]
        if not rows:
            continue
        epochs = [m["epoch"] for m in rows]
        dists: dict[str, dict[str, list[float]]] = {}
        for col in sorted({k for m in rows for k in m} - skip):
            values = [m.get(col, float("nan")) for m in rows]
            share = _SHARE.match(col)
            if share:
                dists.setdefault(share.group("q"), {})[share.group("v")] = values
            else:
                panels.append(("line", f"{source}: {col}", epochs, values))
        panels[:0] = [("dist", f"{q} distribution", epochs, d) for q, d in dists.items()]
    return panels


def plot_telemetry(r: RunInfo, path: Path, max_panels: int = 12) -> Path | None:
    panels = telemetry_panels(r)[:max_panels]
    if not panels:
        return None
    plt = _plt()
    cols = min(3, len(panels))
    rows_n = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(4.2 * cols, 3.0 * rows_n), squeeze=False)
    for ax, (kind, title, epochs, data) in zip(axes.flat, panels, strict=False):
        if kind == "dist":
            keys = sorted(data, key=float)
            # ordered options in a sequential colour map: a drift to larger values reads as a
            # shift from dark to light (a cyclic palette would repeat colours beyond 10 options)
            colors = plt.cm.viridis([i / max(len(keys) - 1, 1) for i in range(len(keys))])
            ax.stackplot(epochs, [data[k] for k in keys], labels=keys, colors=colors)
            ax.set(ylim=(0, 1), ylabel="share of samples")
            ax.legend(fontsize=6, ncol=2, loc="upper right")
        else:
            ax.plot(epochs, data, marker=".")
            ax.grid(alpha=0.3)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("epoch")
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(f"{r.name}: per-epoch telemetry")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(run_dirs: list[Path], out: Path) -> Path:
    runs = [RunInfo(Path(p)) for p in run_dirs]
    out.mkdir(parents=True, exist_ok=True)
    parts = ["# adaptrain report", "", "Accuracies in %. Runs without `adaptrain eval` output show "
             "their per-epoch validation numbers (clean, and the training's selection attack in the "
             "worst-case column).", "", table(runs), ""]
    cmp = init_comparison(runs)
    if cmp:
        parts += [cmp, ""]
    figures = []
    for name, fn in (("learning_curves.png", plot_learning_curves), ("eps_curves.png", plot_eps_curves)):
        p = fn(runs, out / name)
        if p:
            figures.append(p.name)
    for r in runs:
        p = plot_telemetry(r, out / f"telemetry_{r.name}.png")
        if p:
            figures.append(p.name)
    parts += [f"![{f}]({f})" for f in figures]
    (out / "report.md").write_text("\n".join(parts) + "\n")
    return out / "report.md"
