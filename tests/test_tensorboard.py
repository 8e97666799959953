"""Live logging: ``log.tensorboard`` writes the epoch metrics and strategy telemetry as scalars
and the per-sample eps distribution as a histogram; ``log.wandb`` is refused in one line when
wandb is missing; a failing logger never stops the run."""

from __future__ import annotations

import csv
import importlib.util

import pytest

from adaptrain import logmetrics
from adaptrain.config import build_config
from adaptrain.errors import ConfigError
from adaptrain.logmetrics import LiveLog, share_groups
from adaptrain.train import train

TINY = ["data.subset=64", "data.batch_size=32", "model.width=4", "eval.n=16", "device=cpu",
        "strategy.name=ecas", "strategy.eps_unit=0.01", "strategy.eps_min=5", "strategy.eps_max=15"]
QUIET = {"progress": False, "log": lambda line: None}


def events(run):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "histograms": 0})
    acc.Reload()
    return acc


def test_scalars_and_eps_histograms_are_written_and_a_resume_appends(tmp_path):
    pytest.importorskip("tensorboard")
    run = tmp_path / "run"
    train(build_config("quickstart", [*TINY, "epochs=1", "log.tensorboard=true"]), run, **QUIET)
    train(build_config("quickstart", [*TINY, "epochs=2", "log.tensorboard=true"]), run,
          resume=True, **QUIET)
    acc = events(run)
    tags = acc.Tags()
    for tag in ("metrics/train_loss", "metrics/clean_acc", "metrics/robust_acc", "metrics/lr",
                "strategy/mean_eps", "strategy/frac_up", "strategy/eps_share_5"):
        assert tag in tags["scalars"], (tag, tags["scalars"])
    assert [e.step for e in acc.Scalars("metrics/train_loss")] == [1, 2]
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert [e.value for e in acc.Scalars("metrics/train_loss")] == pytest.approx(
        [float(r["train_loss"]) for r in rows], rel=1e-6)
    hists = acc.Histograms("strategy/eps")
    assert [h.step for h in hists] == [1, 2]
    h = hists[-1].histogram_value  # ECAS's budgets 5..15 (units of eps_unit)
    assert 5 <= h.min <= h.max <= 15 and h.num == pytest.approx(1.0)


def test_tensorboard_is_off_by_default(tmp_path):
    train(build_config("quickstart", [*TINY, "epochs=1"]), tmp_path / "run", **QUIET)
    assert not (tmp_path / "run" / "tensorboard").exists()


def test_missing_packages_are_refused_naming_the_field(monkeypatch):
    if importlib.util.find_spec("wandb") is None:
        with pytest.raises(ConfigError) as exc:
            build_config("quickstart", ["log.wandb=true"])
        assert exc.value.field == "log.wandb" and "\n" not in str(exc.value)
    real = importlib.util.find_spec
    monkeypatch.setattr(logmetrics.importlib.util, "find_spec",
                        lambda name, *a: None if name == "tensorboard" else real(name, *a))
    with pytest.raises(ConfigError) as exc:
        build_config("quickstart", ["log.tensorboard=true"])
    assert exc.value.field == "log.tensorboard"


def test_a_failing_logger_warns_once_and_the_run_goes_on(capsys):
    class Broken:
        calls = 0

        def epoch(self, step, row, telemetry):
            Broken.calls += 1
            raise OSError("disk full")

    live = LiveLog("unused", epochs=3)
    live.sinks["TensorBoard"] = Broken()
    for epoch in (1, 2, 3):
        live.epoch({"epoch": epoch, "train_loss": 1.0}, {})
    assert Broken.calls == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["WARNING: TensorBoard logging stopped (OSError: disk full); metrics.csv and "
                   "strategy.csv are unaffected"]


def test_share_columns_group_into_distributions():
    tel = {"epoch": 3, "eps_share_3": 0.25, "eps_share_12": 0.75, "iters_share_5": 1.0,
           "mean_eps": 9.75, "step_share_0.5": float("nan")}
    assert share_groups(tel) == {"eps": ([3.0, 12.0], [0.25, 0.75]), "iters": ([5.0], [1.0])}
