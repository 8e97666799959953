"""The figures of ``adaptrain report``, each readable without the code that wrote it.

* Learning curves: validation accuracy (clean dashed, the selection attack solid) and training
  loss per epoch. The titles name the split and its size, the attack and its budget eps in
  the data's units (:func:`eps_text`: 8/255 for CIFAR, 0.1 for digits); a star marks the epoch
  whose checkpoint is ``best``; one legend of run names and line styles sits below the axes.
* Telemetry: one panel per column of strategy.csv (and the objective's columns of
  metrics.csv), titled with the label its component declares next to ``end_epoch``
  (``Component.telemetry``, units included); ``<q>_share_<v>`` groups are stacked areas with a
  colour bar of v. A column constant over the run is a setting: it is written once in the
  heading ("h_high (nats) = 2.274"), never drawn; columns never recorded (all NaN) are left out.
* Every y-range spans at least a floor for its quantity (:data:`ACC_FLOOR` accuracy, a budget
  unit, ...; ``Series.floor``), so a nearly flat curve's noise is not magnified into a trend.

Functions return the matplotlib Figure (tests read its texts); :func:`save` writes it atomically.
"""

from __future__ import annotations

import io
import math
import re
import string
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import fileio
from .component import Series

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from .report import RunInfo

ACC_FLOOR = 0.05  # accuracy ranges span at least 5 points: epoch-to-epoch noise of n ~ 300 is ~2
LOSS_FLOOR = 0.1  # nats
LOOP_METRICS = {"epoch", "lr", "train_loss", "train_acc", "train_time_s", "eval_time_s",
                "clean_acc", "robust_acc"}  # the learning curves' columns, not telemetry
# metrics.csv columns the training loop itself adds (train.py), shown as telemetry
LOOP_TELEMETRY = {
    "fgsm_acc": Series("FGSM validation accuracy (catastrophic-overfitting signal)", floor=ACC_FLOOR),
    "catastrophic_overfitting": Series("catastrophic overfitting detected (1) or not (0)", floor=1.0),
}
_SHARE = re.compile(r"^(?P<q>.+)_share_(?P<v>[-+0-9.eE]+)$")


def _wrap(text: str, width: int) -> str:
    return textwrap.fill(text, width, break_on_hyphens=False)  # "PGD-20" stays whole


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig: Figure, path: Path, dpi: int = 120) -> Path:
    """Write ``fig`` to ``path`` (format from the suffix) in one atomic step and close it."""
    buf = io.BytesIO()
    fig.savefig(buf, dpi=dpi, format=path.suffix.lstrip(".") or "png", bbox_inches="tight")
    _plt().close(fig)
    fileio.write_file(path, buf.getvalue())
    return path


# ---------------------------------------------------------------------------------------
# texts


def eps_text(eps: float) -> str:
    """A budget as people write it: a whole number k of 1/255 up to 32/255 as "k/255" (the
    convention of 8-bit image data: CIFAR's 8/255), anything else as a decimal (digits' 0.1,
    MNIST's 0.3, an L2 radius 0.5)."""
    k = eps * 255
    if eps > 0 and abs(k - round(k)) < 1e-6 and round(k) <= 32:
        return f"{round(k)}/255"
    return f"{eps:.4g}"


def unit_text(unit: float) -> str:
    """A budget unit as a label suffix: 1/255 -> "/255", 0.01 -> "/100", 0.3 -> "x 0.3"."""
    inv = 1 / unit if unit > 0 else 0
    if inv >= 1 and abs(inv - round(inv)) < 1e-6:
        return f"/{round(inv)}"
    return f"x {unit:g}"


def attack_text(spec: str) -> str:
    """"pgd-20" -> "PGD-20", "cw-10" -> "CW-10", "aa" -> "AutoAttack"."""
    if spec == "aa":
        return "AutoAttack"
    name, _, rest = spec.partition("-")
    return name.upper() + (f"-{rest}" if rest else "")


def _norm_text(norm: str) -> str:
    return {"linf": "L∞", "l2": "L2", "l1": "L1"}.get(norm, norm)


def eval_setting(r: RunInfo) -> str:
    """The run's per-epoch selection attack: "PGD-20 at ε = 0.1 (L∞)"."""
    e = r.eval_info
    return f"{attack_text(str(e['attack']))} at ε = {eps_text(float(e['eps']))} ({_norm_text(e['norm'])})"


def weights_prefix(r: RunInfo) -> str:
    """``ema_`` when the run selected its best checkpoint on the moving average of its weights
    (the model it delivers; its per-epoch columns are ``ema_clean_acc`` / ``ema_robust_acc``)."""
    return "ema_" if r.eval_info.get("weights") == "ema" else ""


def split_text(r: RunInfo) -> str:
    """Which images the per-epoch numbers come from, as the run's config says."""
    n = r.eval_info.get("n")
    count = f"{n} " if n else ""
    if r.split == "val":
        return f"{count}held-out training images (data.val_size)"
    return f"the first {count}test images (data.val_size = 0: no validation split)"


def _fill(label: str, section: dict[str, Any]) -> str:
    """Replace ``{field}`` in a declared label by the unit the component's field holds."""
    fields = {f for _, f, _, _ in string.Formatter().parse(label) if f}
    units = {f: unit_text(float(section[f])) if isinstance(section.get(f), (int, float))
             else "units" for f in fields}
    return label.format(**units)


# ---------------------------------------------------------------------------------------
# axes helpers


def floored_ylim(ax: Axes, values: list[float], floor: float, lo: float | None = None,
                 hi: float | None = None) -> tuple[float, float]:
    """Set the y-range to the data's, widened about its centre to at least ``floor`` (a tenth
    of the largest |value| when 0), padded 5 %, and kept inside [lo, hi] when given."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return ax.get_ylim()
    vmin, vmax = min(finite), max(finite)
    floor = floor or 0.1 * max(abs(vmin), abs(vmax)) or 1e-6
    span = max(vmax - vmin, floor) * 1.1  # 5 % padding either side
    low = (vmin + vmax) / 2 - span / 2
    high = low + span
    if lo is not None and low < lo:  # slide the window up to the bound, keeping its width
        low, high = lo, high + (lo - low)
    if hi is not None and high > hi:
        low, high = low - (high - hi), hi
        if lo is not None:
            low = max(low, lo)
    ax.set_ylim(low, high)
    return low, high


# ---------------------------------------------------------------------------------------
# learning curves


def learning_curves(runs: list[RunInfo]) -> Figure | None:
    """Validation accuracy and training loss per epoch of every run, or None without metrics."""
    if not any(r.metrics for r in runs):
        return None
    from matplotlib.lines import Line2D

    plt = _plt()
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(11, 4.2), layout="constrained")
    settings = {eval_setting(r) for r in runs}
    shared = len(settings) == 1
    handles = []
    accs: list[float] = []
    losses: list[float] = []
    for i, r in enumerate(runs):
        color = f"C{i % 10}"
        pre = weights_prefix(r)
        rows = [m for m in r.metrics if f"{pre}clean_acc" in m]
        ep = [m["epoch"] for m in rows]
        robust, clean = [m[f"{pre}robust_acc"] for m in rows], [m[f"{pre}clean_acc"] for m in rows]
        ax_acc.plot(ep, robust, color=color, ls="-")
        ax_acc.plot(ep, clean, color=color, ls="--")
        accs += robust + clean
        best = r.summary.get("best") or {}
        key = pre + ("clean_acc" if r.eval_info.get("select") == "clean" else "robust_acc")
        if best.get("epoch") is not None and best.get(key) is not None:
            ax_acc.plot([best["epoch"]], [best[key]], ls="none", marker="*", ms=13, color=color,
                        mec="black", mew=0.8, zorder=5, clip_on=False)  # whole at accuracy 1.0
        name = r.name if shared else f"{r.name} ({eval_setting(r)})"
        name += " (EMA weights)" if pre else ""
        if best.get("epoch") is not None:
            name += f", best epoch {best['epoch']}"
        handles.append(Line2D([], [], color=color, lw=2, label=name))
        loss = [m["train_loss"] for m in r.metrics if "train_loss" in m]
        ax_loss.plot([m["epoch"] for m in r.metrics if "train_loss" in m], loss, color=color)
        losses += loss
    robust_label = next(iter(settings)) if shared else "robust (the attack of each run)"
    handles += [Line2D([], [], color="0.3", ls="-", label=robust_label),
                Line2D([], [], color="0.3", ls="--", label="clean"),
                Line2D([], [], color="0.3", ls="none", marker="*", ms=11, mec="black",
                       label="best checkpoint (selected on this split)")]
    first = runs[0]
    where = split_text(first) if all(split_text(r) == split_text(first) for r in runs) else \
        "each run's validation split"
    what = robust_label if shared else "robust"
    ax_acc.set_title(_wrap(f"Validation accuracy: {what} (solid) and clean (dashed), "
                                   f"on {where}", 60), fontsize=10)
    ax_acc.set(xlabel="epoch", ylabel="accuracy")
    floored_ylim(ax_acc, accs, ACC_FLOOR, 0.0, 1.0)
    objectives = {str(r.config.get("objective", {}).get("name", "")) for r in runs}
    obj = f" ({next(iter(objectives))} objective)" if len(objectives) == 1 and "" not in objectives else ""
    ax_loss.set_title(f"Training loss{obj}, mean over the epoch's batches", fontsize=10)
    ax_loss.set(xlabel="epoch", ylabel="loss (nats)")
    floored_ylim(ax_loss, losses, LOSS_FLOOR, 0.0)
    for ax in (ax_acc, ax_loss):
        ax.grid(alpha=0.3)
    # one row when it fits (legends fill column by column, so a grid would mix runs and styles)
    fig.legend(handles=handles, loc="outside lower center", fontsize=8, frameon=False,
               ncol=len(handles) if len(handles) <= 6 else 3)
    return fig


# ---------------------------------------------------------------------------------------
# telemetry


@dataclass
class Panel:
    """One telemetry panel: ``kind`` "line" (``data`` a list per epoch) or "dist" (``data``
    {value: shares per epoch}); ``title`` the declared label (else the column name)."""

    kind: str
    column: str
    title: str
    epochs: list[float]
    data: Any
    floor: float = 0.0


@dataclass
class Telemetry:
    panels: list[Panel]
    constants: list[str]  # "label = value" of the columns constant over the run


def declared(r: RunInfo) -> dict[str, tuple[dict[str, Series], dict[str, Any]]]:
    """Per source ("strategy", "objective"): the run's component's ``telemetry`` declaration
    and its config section (for the ``{field}`` units of the labels)."""
    from .objectives import OBJECTIVES
    from .strategies import STRATEGIES

    out = {}
    for source, registry in (("strategy", STRATEGIES), ("objective", OBJECTIVES)):
        section = r.config.get(source) or {}
        name = section.get("name")
        series = {}
        if name in registry:
            series = dict(getattr(registry.get(name).builder, "telemetry", {}))
        if source == "objective":
            series.update(LOOP_TELEMETRY)
        out[source] = (series, section)
    return out


def _constant(values: list[float]) -> float | None:
    """The value of a column that never changes over two or more epochs, else None."""
    finite = [v for v in values if math.isfinite(v)]
    if len(values) < 2 or len(finite) != len(values):
        return None
    first = finite[0]
    return first if all(abs(v - first) <= 1e-9 * max(1.0, abs(first)) for v in finite) else None


def telemetry(r: RunInfo) -> Telemetry:
    """The run's telemetry panels, dists first, and the settings that stayed constant."""
    dists: list[Panel] = []
    lines: list[Panel] = []
    constants: list[str] = []
    labels = declared(r)
    for source, rows, skip in (("strategy", r.telemetry, {"epoch"}),
                               ("objective", r.metrics, LOOP_METRICS)):
        rows = [m for m in rows if set(m) - skip]
        if not rows:
            continue
        series, section = labels[source]
        epochs = [m["epoch"] for m in rows]
        groups: dict[str, dict[str, list[float]]] = {}
        for col in sorted({k for m in rows for k in m} - skip):
            values = [m.get(col, float("nan")) for m in rows]
            if not any(math.isfinite(v) for v in values):
                continue  # never recorded (a term switched off)
            share = _SHARE.match(col)
            if share:
                groups.setdefault(share.group("q"), {})[share.group("v")] = values
                continue
            s = series.get(col, Series(col))
            label = _fill(s.label, section)
            value = _constant(values)
            if value is not None:
                constants.append(f"{label} = {value:.4g}")
            else:
                lines.append(Panel("line", col, label, epochs, values, s.floor))
        for q, shares in groups.items():
            # a value no sample ever took is no band; a distribution that never moves is a setting
            shares = {v: s for v, s in shares.items() if any(x > 0 for x in s if math.isfinite(x))}
            s = series.get(f"{q}_share", Series(f"share of samples per {q}"))
            label = _fill(s.label, section)
            if shares and all(_constant(s) is not None for s in shares.values()):
                ordered = sorted(shares.items(), key=lambda kv: float(kv[0]))
                constants.append(f"{label}: " + ", ".join(f"{v} -> {x[0]:.3g}" for v, x in ordered))
            elif shares:
                dists.append(Panel("dist", f"{q}_share", label, epochs, shares))
    return Telemetry(dists + lines, constants)


def _stack(fig: Figure, ax: Axes, p: Panel) -> None:
    """Stacked shares per value with a colour bar of the values (ordered options in a sequential
    map: a drift to larger values reads as dark to light; a bar never covers the data)."""
    import matplotlib as mpl

    plt = _plt()
    keys = sorted(p.data, key=float)
    n = len(keys)
    colors = plt.cm.viridis([i / max(n - 1, 1) for i in range(n)])
    ax.stackplot(p.epochs, [p.data[k] for k in keys], colors=colors)
    ax.set(ylim=(0, 1), ylabel="share of samples", xlim=(min(p.epochs), max(p.epochs)))
    cmap = mpl.colors.ListedColormap(colors)
    norm = mpl.colors.BoundaryNorm(list(range(n + 1)), n)
    bar = fig.colorbar(mpl.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, pad=0.02)
    step = max(1, -(-n // 8))  # at most ~8 tick labels
    bar.set_ticks([i + 0.5 for i in range(0, n, step)], labels=keys[::step])
    bar.ax.tick_params(labelsize=7)


def telemetry_figure(r: RunInfo, max_panels: int = 12) -> Figure | None:
    """The run's telemetry as one figure, or None when it recorded none."""
    t = telemetry(r)
    panels = t.panels[:max_panels]
    if not panels:
        return None
    plt = _plt()
    cols = min(3, len(panels))
    rows_n = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(4.4 * cols, 3.1 * rows_n + 0.8),
                             squeeze=False, layout="constrained")
    for ax, p in zip(axes.flat, panels, strict=False):
        if p.kind == "dist":
            _stack(fig, ax, p)
        else:
            ax.plot(p.epochs, p.data, marker=".", color="C0")
            ax.grid(alpha=0.3)
            floored_ylim(ax, p.data, p.floor)
        ax.set_title(_wrap(p.title, 45), fontsize=9)
        ax.set_xlabel("epoch")
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    names = [f"{s} {r.config.get(s, {}).get('name')}" for s in ("strategy", "objective")
             if r.config.get(s, {}).get("name")]
    head = f"{r.name}: per-epoch telemetry" + (f" ({', '.join(names)})" if names else "")
    if t.constants:
        head += "\n" + _wrap("constant over the run: " + "; ".join(t.constants), 130)
    if len(t.panels) > max_panels:
        head += f"\n(first {max_panels} of {len(t.panels)} panels)"
    fig.suptitle(head, fontsize=10)
    return fig
