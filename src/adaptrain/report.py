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

Rows without ``adaptrain eval`` output show the per-epoch numbers labelled with the split they
came from, as the run's config says: ``val`` (held-out training images) or ``test``
(``data.val_size: 0``). The figures and their conventions: :mod:`adaptrain.plots`.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from . import plots
from .errors import ConfigError


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
        self.config: dict[str, Any] = {}
        cfg = path / "config.yaml"
        if cfg.is_file():
            import yaml

            self.config = yaml.safe_load(cfg.read_text()) or {}
            init = self.config.get("init_from")
            if init:
                p = Path(init)
                while p != p.parent and not (p / "summary.json").is_file():
                    p = p.parent
                self.init_from = p if (p / "summary.json").is_file() else None
        # the per-epoch evaluation: summary.json's record, else the config's eval section
        conf_eval = self.config.get("eval") or {}
        self.eval_info: dict[str, Any] = {
            "attack": conf_eval.get("attack", "pgd-10"), "eps": conf_eval.get("eps", 8 / 255),
            "norm": (self.config.get("attack") or {}).get("norm", "linf"),
            "select": conf_eval.get("select", "robust"), "n": conf_eval.get("n"),
            **(self.summary.get("eval") or {})}

    @property
    def split(self) -> str:
        """"val" or "test": where the per-epoch numbers (and the best checkpoint) come from."""
        if self.eval_info.get("split") in ("val", "test"):
            return str(self.eval_info["split"])
        val_size = (self.config.get("data") or {}).get("val_size")
        return "val" if val_size is None or val_size > 0 else "test"


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
    # AutoAttack's sub-attacks stay in eval/*.md; without any eval, the per-epoch clean accuracy
    cols = [c for c in _columns(runs) if "/" not in c] or ["clean"]
    head = ["run", "checkpoint", "epoch", *cols, "worst case", "RD", "corruptions (mean)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in runs:
        for which in ("best", "last"):
            ev = r.evals.get(which)
            s = r.summary.get(which) or {}
            if ev is None:
                pre = plots.weights_prefix(r)  # the averaged weights' columns for an EMA run
                cells = [_pct(s.get(f"{pre}clean_acc")) if c == "clean" else "-" for c in cols]
                worst = _pct(s.get(f"{pre}robust_acc"))
                extra = ["-", "-"]
                label = f"{which} ({r.split}, {r.eval_info.get('attack', '')})"
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


def plot_learning_curves(runs: list[RunInfo], path: Path) -> Path | None:
    fig = plots.learning_curves(runs)
    return None if fig is None else plots.save(fig, path)


def plot_eps_curves(runs: list[RunInfo], path: Path) -> Path | None:
    from .evaluate.curve import plot_curves

    curves = {f"{r.name} {w}": ev["curve"] for r in runs for w, ev in r.evals.items() if ev.get("curve")}
    return plot_curves(curves, path, "accuracy vs eps") if curves else None


def plot_telemetry(r: RunInfo, path: Path, max_panels: int = 12) -> Path | None:
    fig = plots.telemetry_figure(r, max_panels)
    return None if fig is None else plots.save(fig, path, dpi=110)


def write_report(run_dirs: list[Path], out: Path) -> Path:
    runs = [RunInfo(Path(p)) for p in run_dirs]
    out.mkdir(parents=True, exist_ok=True)
    parts = ["# adaptrain report", "", "Accuracies in %. Runs without `adaptrain eval` output show "
             "their per-epoch numbers (clean, and the training's selection attack in the "
             "worst-case column) on the split the run selected on: val (held-out training "
             "images) or test (the run has no held-out split).", "", table(runs), ""]
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
