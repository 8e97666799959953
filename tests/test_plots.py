"""``adaptrain report``'s figures say what they show: titles name the split, the attack and its
budget in the data's units, a star marks the best epoch, telemetry panels carry the labels the
components declare, settings constant over the run are written once and never drawn, and
y-ranges never magnify noise."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import yaml
from matplotlib.lines import Line2D

from adaptrain import plots
from adaptrain.report import RunInfo, table


def make_run(path: Path, *, name_eps: float = 0.1, split: str = "val", select: str = "robust",
             robust: list[float] | None = None, clean: list[float] | None = None,
             strategy: dict | None = None, telemetry: list[dict] | None = None) -> RunInfo:
    robust = robust or [0.30, 0.55, 0.50]
    clean = clean or [0.70, 0.90, 0.92]
    path.mkdir(parents=True)
    key = robust if select == "robust" else clean
    best = max(range(len(key)), key=lambda i: key[i])
    (path / "config.yaml").write_text(yaml.safe_dump({
        "data": {"name": "digits", "val_size": 200 if split == "val" else 0},
        "strategy": strategy or {"name": "fixed", "eps": name_eps},
        "objective": {"name": "pgd_at"}, "attack": {"name": "pgd", "norm": "linf"},
        "eval": {"attack": "pgd-20", "eps": name_eps, "n": 200, "select": select}}))
    (path / "summary.json").write_text(json.dumps({
        "best_epoch": best + 1,
        "best": {"epoch": best + 1, "clean_acc": clean[best], "robust_acc": robust[best]},
        "last": {"epoch": len(key), "clean_acc": clean[-1], "robust_acc": robust[-1]},
        "eval": {"attack": "pgd-20", "eps": name_eps, "step_size": 0.01, "n": 200, "split": split,
                 "norm": "linf", "select": select}}))
    with open(path / "metrics.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["epoch", "lr", "train_loss", "train_acc", "clean_acc", "robust_acc"])
        for e, (r, c) in enumerate(zip(robust, clean, strict=True), start=1):
            w.writerow([e, 0.1, 2.0 / e, 0.5, c, r])
    if telemetry:
        with open(path / "strategy.csv", "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(telemetry[0]))
            w.writeheader()
            w.writerows(telemetry)
    return RunInfo(path)


def texts(fig) -> list[str]:
    """Every text of the figure: titles, axis labels, legend entries, suptitle."""
    out = [t.get_text() for t in fig.findobj(lambda a: hasattr(a, "get_text"))]
    return [t for t in out if t]


def legend_labels(fig) -> list[str]:
    return [t.get_text() for leg in fig.legends for t in leg.get_texts()]


def test_a_run_named_clean_is_not_labelled_clean_clean(tmp_path):
    fig = plots.learning_curves([make_run(tmp_path / "clean"), make_run(tmp_path / "quickstart")])
    labels = legend_labels(fig)
    assert not any("clean clean" in t for t in texts(fig))
    assert labels.count("clean") == 1  # the line style, once, not per run
    assert [t for t in labels if t.startswith("clean,")] == ["clean, best epoch 2"]


def test_learning_curve_titles_name_split_attack_and_budget_in_the_data_units(tmp_path):
    digits = plots.learning_curves([make_run(tmp_path / "d", name_eps=0.1)])
    title = digits.axes[0].get_title().replace("\n", " ")
    assert "PGD-20 at ε = 0.1 (L∞)" in title and "200 held-out training images" in title
    cifar = plots.learning_curves([make_run(tmp_path / "c", name_eps=8 / 255, split="test")])
    title = cifar.axes[0].get_title().replace("\n", " ")
    assert "PGD-20 at ε = 8/255" in title and "test images" in title and "held-out" not in title
    assert "PGD-20 at ε = 8/255 (L∞)" in legend_labels(cifar)


def test_best_epoch_is_marked_where_the_selected_metric_peaked(tmp_path):
    fig = plots.learning_curves([make_run(tmp_path / "a", robust=[0.3, 0.6, 0.5])])
    stars = [ln for ln in fig.axes[0].get_lines() if ln.get_marker() == "*"]
    assert len(stars) == 1
    assert list(stars[0].get_xdata()) == [2] and list(stars[0].get_ydata()) == [0.6]
    by_clean = plots.learning_curves([make_run(tmp_path / "b", select="clean",
                                               clean=[0.7, 0.8, 0.95])])
    star = next(ln for ln in by_clean.axes[0].get_lines() if ln.get_marker() == "*")
    assert list(star.get_xdata()) == [3] and list(star.get_ydata()) == [0.95]
    assert any(isinstance(h, Line2D) and h.get_marker() == "*" for h in by_clean.legends[0].legend_handles)


def test_accuracy_range_is_never_narrower_than_the_floor(tmp_path):
    fig = plots.learning_curves([make_run(tmp_path / "flat", robust=[0.158, 0.161, 0.159],
                                          clean=[0.160, 0.159, 0.161])])
    low, high = fig.axes[0].get_ylim()
    assert high - low >= plots.ACC_FLOOR and low <= 0.158 and high >= 0.161
    near_top = plots.learning_curves([make_run(tmp_path / "top", robust=[0.99, 1.0, 0.995],
                                               clean=[1.0, 1.0, 1.0])])
    low, high = near_top.axes[0].get_ylim()
    assert high == 1.0 and high - low >= plots.ACC_FLOOR  # the window slides under the bound


ECAS = {"name": "ecas", "eps_unit": 1 / 255, "eps_min": 3, "eps_max": 5}


def ecas_rows() -> list[dict]:
    rows = []
    for e in (1, 2, 3):
        rows.append({"epoch": e, "eps_share_3": 0.5, "eps_share_4": 0.3 - 0.1 * (e - 1),
                     "eps_share_5": 0.2 + 0.1 * (e - 1), "eps_share_6": 0.0,
                     "mean_eps": 3.7 + 0.2 * e, "mean_entropy": 0.159 + 0.001 * (e % 2),
                     "frac_up": 0.1 * e, "h_high": 2.274, "h_low": 1.3, "reward": float("nan")})
    return rows


def test_telemetry_titles_are_the_declared_labels_with_units(tmp_path):
    r = make_run(tmp_path / "ecas", strategy=ECAS, telemetry=ecas_rows())
    t = plots.telemetry(r)
    titles = {p.column: p.title for p in t.panels}
    assert titles["mean_eps"] == "mean budget ε (/255)"
    assert titles["eps_share"] == "share of samples per budget ε (/255)"
    assert titles["mean_entropy"] == "mean clean entropy (nats)"
    assert "reward" not in titles  # never recorded: no panel
    dist = next(p for p in t.panels if p.kind == "dist")
    assert set(dist.data) == {"3", "4", "5"}  # no sample ever at 6: no band


def test_constant_columns_are_written_once_and_never_drawn(tmp_path):
    r = make_run(tmp_path / "ecas", strategy=ECAS, telemetry=ecas_rows())
    fig = plots.telemetry_figure(r)
    titles = [ax.get_title() for ax in fig.axes]
    assert not any("h_high" in t or "h_low" in t for t in titles)
    head = fig.get_suptitle().replace("\n", " ")
    assert "constant over the run" in head and "h_high (nats) = 2.274" in head
    assert "h_low (nats) = 1.3" in head
    drawn = sum(len(ax.get_lines()) for ax in fig.axes)
    assert drawn == len([p for p in plots.telemetry(r).panels if p.kind == "line"])


def test_telemetry_ranges_respect_the_declared_floor(tmp_path):
    r = make_run(tmp_path / "ecas", strategy=ECAS, telemetry=ecas_rows())
    fig = plots.telemetry_figure(r)
    ax = next(a for a in fig.axes if a.get_title() == "mean clean entropy (nats)")
    low, high = ax.get_ylim()
    assert high - low >= 0.2  # ECAS declares 0.2 nats: 0.159..0.160 is not stretched to fill the panel
    assert not fig.legends and all(a.get_legend() is None for a in fig.axes)  # a colour bar instead


def test_budget_units_follow_the_component_field():
    assert plots._fill("mean ε ({eps_unit})", {"eps_unit": 1 / 255}) == "mean ε (/255)"
    assert plots._fill("mean ε ({eps_unit})", {"eps_unit": 0.01}) == "mean ε (/100)"
    assert plots.eps_text(8 / 255) == "8/255" and plots.eps_text(0.1) == "0.1"
    assert plots.eps_text(0.3) == "0.3" and plots.eps_text(0.0) == "0"


def test_report_names_the_split_the_run_selected_on(tmp_path):
    val = make_run(tmp_path / "v", split="val")
    test = make_run(tmp_path / "t", split="test")
    text = table([val, test])
    assert "| v | best (val, pgd-20) |" in text
    assert "| t | best (test, pgd-20) |" in text and "| t | best (val" not in text


def test_every_declared_label_formats_with_its_component_defaults():
    """A ``{field}`` in a label must name a field of the component, or the label would read
    "units" in every report."""
    from adaptrain.objectives import OBJECTIVES
    from adaptrain.strategies import STRATEGIES

    for registry in (STRATEGIES, OBJECTIVES):
        for name in registry.names():
            entry = registry.get(name)
            for column, s in getattr(entry.builder, "telemetry", {}).items():
                label = plots._fill(s.label, entry.defaults())
                assert "units" not in label and "{" not in label, (name, column, label)
                assert s.floor >= 0 and not math.isnan(s.floor)
