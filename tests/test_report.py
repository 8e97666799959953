"""``adaptrain report``: table from eval JSONs, fine-tuning comparison, telemetry panels, plots."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from adaptrain.cli import main
from adaptrain.plots import telemetry
from adaptrain.report import RunInfo, table


def fake_run(path: Path, clean: float, robust: float, telemetry: bool = False,
             init_from: Path | None = None, evaluated: bool = True) -> Path:
    path.mkdir(parents=True)
    (path / "summary.json").write_text(json.dumps({
        "best_epoch": 2, "best": {"epoch": 2, "clean_acc": clean, "robust_acc": robust},
        "last": {"epoch": 3, "clean_acc": clean - 0.01, "robust_acc": robust - 0.02},
        "eval": {"attack": "pgd-10"}}))
    (path / "config.yaml").write_text(f"init_from: {init_from}\n" if init_from else "seed: 0\n")
    with open(path / "metrics.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["epoch", "lr", "train_loss", "train_acc", "clean_acc", "robust_acc", "kl_mean"])
        for e in (1, 2, 3):
            w.writerow([e, 0.1, 2.0 / e, 0.3, clean - 0.1 / e, robust - 0.1 / e, 0.5 * e])
    if telemetry:
        with open(path / "strategy.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["epoch", "eps_share_3", "eps_share_8", "eps_share_12", "frac_up"])
            for e in (1, 2, 3):
                w.writerow([e, 0.5, 0.2 + 0.05 * e, 0.3 - 0.05 * e, 0.1 * e])
    if evaluated:
        (path / "eval").mkdir()
        (path / "eval" / "best.json").write_text(json.dumps({
            "n_examples": 100, "eps": 8 / 255, "norm": "linf", "mode": "independent",
            "accuracy": {"clean": clean, "pgd-20": robust, "aa": robust - 0.03, "aa/apgd-ce": robust},
            "worst_case": robust - 0.04, "rd": 0.0123,
            "curve": {"eps": [0, 4 / 255, 8 / 255], "accuracy": [clean, robust + 0.1, robust]},
            "corruptions": {"mean_all": 0.61}}))
    return path


def test_table_lists_each_checkpoint_and_attack(tmp_path):
    a = RunInfo(fake_run(tmp_path / "a", 0.8, 0.45, telemetry=True))
    text = table([a])
    row = "| a | best (test n=100, independent) | 2 | 80.00 | 45.00 | 42.00 | 41.00 | 0.0123 | 61.00 |"
    assert row in text
    assert "| a | last (val, pgd-10) | 3 | 79.00 |" in text
    assert "apgd-ce" not in text  # sub-attacks stay in the eval's own markdown


def test_telemetry_panels_group_share_columns_into_distributions(tmp_path):
    r = RunInfo(fake_run(tmp_path / "a", 0.8, 0.45, telemetry=True))
    panels = {p.column: p for p in telemetry(r).panels}
    dist = panels["eps_share"]
    assert dist.kind == "dist" and set(dist.data) == {"3", "8", "12"} and dist.data["3"] == [0.5, 0.5, 0.5]
    assert panels["frac_up"].kind == "line"
    assert panels["kl_mean"].data == [0.5, 1.0, 1.5]


def test_report_command_writes_tables_plots_and_the_fine_tuning_change(tmp_path, capsys):
    base = fake_run(tmp_path / "standard", 0.90, 0.01)
    tuned = fake_run(tmp_path / "finetuned", 0.893, 0.20, telemetry=True,
                     init_from=base / "checkpoints" / "best")
    out = tmp_path / "rep"
    assert main(["report", str(base), str(tuned), "--out", str(out)]) == 0
    md = (out / "report.md").read_text()
    assert "| finetuned (best) | standard | 90.00 | 89.30 | **-0.70** | test n=100 |" in md
    for png in ("learning_curves.png", "eps_curves.png", "telemetry_finetuned.png"):
        assert (out / png).stat().st_size > 1000, png
        assert f"]({png})" in md
    assert (out / "telemetry_standard.png").is_file()  # objective telemetry only (kl_mean)
    assert "written to" in capsys.readouterr().out


def test_report_refuses_a_directory_that_is_not_a_run(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err
