"""Exponential moving average of the weights (adaptrain.ema, docs/ema.md): the schedule against
a hand computation, BatchNorm buffers, checkpoints, exact resume, AWP's order, selection and
``adaptrain eval --weights``, refusals, and two ranks against one process."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

from adaptrain import checkpoint
from adaptrain import train as train_mod
from adaptrain.cli import main
from adaptrain.config import build_config
from adaptrain.ema import EMA
from adaptrain.errors import ConfigError
from training_helpers import QUIET, assert_same_last_weights, interrupted_and_resumed

TINY = ["epochs=2", "data.subset=128", "data.batch_size=32", "model.width=4", "eval.n=64",
        "optim.schedule=constant", "device=cpu"]


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)).double()


def set_weights(model: nn.Module, t: int) -> None:
    """Weights (and BatchNorm statistics, as a forward in train mode would) of step ``t``."""
    with torch.no_grad():
        for k, p in enumerate(model.parameters()):
            p.copy_(torch.full_like(p, float((t + 1) * (k + 1)) ** 0.5))
        bn = model[1]
        bn.running_mean.fill_(float(t))
        bn.running_var.fill_(1.0 + t)
        bn.num_batches_tracked.fill_(t + 1)


# ---------------------------------------------------------------------------------------
# the average itself


def test_the_average_copies_during_warmup_then_follows_the_ramped_decay():
    model = tiny_model()
    ema = EMA(model, 0.3, warmup_steps=2)
    expected = [p.detach().clone() for p in model.parameters()]
    decays = []
    for t in range(7):
        set_weights(model, t)
        ema.update(t)
        # by hand: copy while t < 2, then d = min(0.3, (1 + s) / (10 + s)), s = t - 2
        d = 0.0 if t < 2 else min(0.3, (1 + (t - 2)) / (10 + (t - 2)))
        decays.append(d)
        expected = [d * e + (1 - d) * p.detach() for e, p in zip(expected, model.parameters(), strict=True)]
        for got, want in zip(ema.module.parameters(), expected, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert decays[:3] == [0.0, 0.0, 0.1] and decays[-1] == 0.3  # the cap is reached at s = 3
    # the average is not the weights: it lags behind them
    assert not torch.equal(next(ema.module.parameters()), next(model.parameters()))


def test_batchnorm_buffers_are_copied_by_default_and_averaged_on_request():
    model = tiny_model()
    copy_ema, avg_ema = EMA(model, 0.5), EMA(model, 0.5, buffers="average")
    set_weights(model, 0)
    copy_ema.update(5)  # past the ramp: d = 0.5
    avg_ema.update(5)
    before = tiny_model()[1]  # the statistics both averages started from
    bn, bn_copy, bn_avg = model[1], copy_ema.module[1], avg_ema.module[1]
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        assert torch.equal(getattr(bn_copy, name), getattr(bn, name)), name
    torch.testing.assert_close(bn_avg.running_mean, 0.5 * before.running_mean + 0.5 * bn.running_mean)
    torch.testing.assert_close(bn_avg.running_var, 0.5 * before.running_var + 0.5 * bn.running_var)
    assert torch.equal(bn_avg.num_batches_tracked, bn.num_batches_tracked)  # integers: copied
    # the averaged parameters are the same in both modes
    for a, b in zip(copy_ema.module.parameters(), avg_ema.module.parameters(), strict=True):
        assert torch.equal(a, b)


def test_the_average_takes_no_gradient_and_round_trips_its_state_dict():
    model = tiny_model()
    ema = EMA(model, 0.9)
    assert not any(p.requires_grad for p in ema.module.parameters())
    set_weights(model, 3)
    ema.update(20)
    other = EMA(tiny_model(), 0.9)
    other.load_state_dict(ema.state_dict())
    for a, b in zip(ema.module.state_dict().values(), other.module.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_a_checkpoint_keeps_both_weight_sets(tmp_path):
    model = tiny_model()
    ema = EMA(model, 0.9)
    set_weights(model, 4)
    ema.update(30)
    checkpoint.save(tmp_path / "ck", model, {"epoch": 1}, ema=ema.state_dict())
    raw = checkpoint.load_weights(tmp_path / "ck")
    averaged = checkpoint.load_weights(tmp_path / "ck" / checkpoint.EMA_FILE)
    assert all(torch.equal(raw[k], v) for k, v in model.state_dict().items())
    assert all(torch.equal(averaged[k], v) for k, v in ema.state_dict().items())
    assert not torch.equal(raw["0.weight"], averaged["0.weight"])
    assert checkpoint.is_complete(tmp_path / "ck")


# ---------------------------------------------------------------------------------------
# the config


@pytest.mark.parametrize(("override", "field"), [
    ("ema.decay=1", "ema.decay"), ("ema.decay=-0.1", "ema.decay"), ("ema.decay=nan", "ema.decay"),
    ("ema.warmup=-1", "ema.warmup"), ("ema.buffers=mean", "ema.buffers"), ("ema.beta=0.9", "ema.beta"),
])
def test_a_bad_ema_value_is_one_line_naming_the_field(capsys, tmp_path, override, field):
    with pytest.raises(ConfigError) as err:
        build_config("quickstart", [override])
    assert err.value.field == field
    code = main(["train", "quickstart", override, "--out", str(tmp_path / "run"), "--dry-run"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith(f"error: {field}:"), lines
    assert not (tmp_path / "run").exists()


def test_ema_is_off_by_default_and_the_preset_switches_it_on():
    assert build_config("pgd-at").ema.decay == 0
    cfg = build_config("pgd-at-ema")
    assert cfg.ema.decay == 0.995 and cfg.ema.buffers == "copy"
    assert cfg.strategy == build_config("pgd-at").strategy  # otherwise PGD-AT


# ---------------------------------------------------------------------------------------
# training


@pytest.fixture(scope="module")
def ema_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ema") / "run"
    train_mod.train(build_config("quickstart", [*TINY, "ema.decay=0.9"]), out, **QUIET)
    return out


def test_the_run_records_both_weight_sets_and_selects_on_the_average(ema_run):
    for name in ("last", "best"):
        ck = ema_run / "checkpoints" / name
        assert (ck / checkpoint.MODEL_FILE).is_file() and (ck / checkpoint.EMA_FILE).is_file()
    rows = list(csv.DictReader((ema_run / "metrics.csv").open()))
    assert {"clean_acc", "robust_acc", "ema_clean_acc", "ema_robust_acc"} <= set(rows[0])
    summary = json.loads((ema_run / "summary.json").read_text())
    assert summary["eval"]["weights"] == "ema"
    assert set(summary["best"]) >= {"clean_acc", "robust_acc", "ema_clean_acc", "ema_robust_acc"}
    best = max(rows, key=lambda r: float(r["ema_robust_acc"]))  # first of equals, as best_row
    assert summary["best_epoch"] == int(best["epoch"])
    state = checkpoint.load_state(ema_run / "checkpoints" / "best")
    assert state["epoch"] == summary["best_epoch"]
    # the last checkpoint's average is the one the loop held: it differs from the raw weights
    raw = checkpoint.load_weights(ema_run / "checkpoints" / "last")
    avg = checkpoint.load_weights(ema_run / "checkpoints" / "last" / checkpoint.EMA_FILE)
    assert raw.keys() == avg.keys()
    assert any(not torch.equal(raw[k], avg[k]) for k in raw if raw[k].is_floating_point())


def test_ema_leaves_the_training_itself_unchanged(ema_run, tmp_path):
    plain = tmp_path / "plain"
    train_mod.train(build_config("quickstart", TINY), plain, **QUIET)
    assert_same_last_weights(plain, ema_run)


def test_a_resumed_run_with_ema_equals_the_uninterrupted_one(tmp_path, monkeypatch):
    over = [*TINY, "epochs=3", "ema.decay=0.9", "ema.buffers=average"]
    full, cut = interrupted_and_resumed(tmp_path, lambda: build_config("quickstart", over),
                                        monkeypatch, after=1)
    assert_same_last_weights(full, cut)
    for name in ("last", "best"):
        a = (full / "checkpoints" / name / checkpoint.EMA_FILE).read_bytes()
        b = (cut / "checkpoints" / name / checkpoint.EMA_FILE).read_bytes()
        assert a == b, name


def test_a_rebuilt_best_checkpoint_keeps_the_average(ema_run, tmp_path):
    """A crash after ``last`` was committed and before ``best`` was saved: recovery rebuilds
    ``best`` from ``last``, the moving average included."""
    from adaptrain import fileio, recovery

    run = tmp_path / "run"
    shutil.copytree(ema_run, run)
    state = checkpoint.load_state(run / "checkpoints" / "last")
    for row in state["history"]:  # make the last epoch the best one, then lose best/
        row["ema_robust_acc"] = float(row["epoch"])
    checkpoint.write_state(run / "checkpoints" / "last", state)
    fileio.remove_tree(run / "checkpoints" / "best")
    recovery.recover(run / "checkpoints", "robust", lambda line: None)
    best = run / "checkpoints" / "best"
    assert (best / checkpoint.EMA_FILE).read_bytes() == (
        run / "checkpoints" / "last" / checkpoint.EMA_FILE).read_bytes()


def test_with_awp_the_average_holds_the_unperturbed_weights(tmp_path):
    """A warm-up over the whole run makes the average a copy of the weights at each update:
    had it been updated between AWP's perturb and restore, it would hold w + v, not w."""
    out = tmp_path / "awp"
    cfg = build_config("quickstart", [*TINY, "awp.gamma=0.05", "ema.decay=0.9", "ema.warmup=2"])
    seen = []
    real = train_mod.AWP.restore

    def spy(self):
        seen.append(self.diff is not None)
        real(self)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(train_mod.AWP, "restore", spy)
        train_mod.train(cfg, out, **QUIET)
    assert seen and all(seen)  # AWP perturbed every step
    raw = checkpoint.load_weights(out / "checkpoints" / "last")
    avg = checkpoint.load_weights(out / "checkpoints" / "last" / checkpoint.EMA_FILE)
    assert all(torch.equal(raw[k], avg[k]) for k in raw)


def test_the_average_is_updated_once_per_optimizer_step(tmp_path, monkeypatch):
    steps = []
    real = EMA.update

    def spy(self, step):
        steps.append(step)
        real(self, step)

    monkeypatch.setattr(EMA, "update", spy)
    train_mod.train(build_config("quickstart", [*TINY, "ema.decay=0.9"]), tmp_path / "r", **QUIET)
    assert steps == list(range(8))  # 2 epochs of 128 / 32 batches, global step indices


# ---------------------------------------------------------------------------------------
# adaptrain eval


def test_eval_chooses_between_the_average_and_the_raw_weights(ema_run, capsys, monkeypatch):
    from adaptrain.cli import eval as eval_cli

    loaded = []
    real = eval_cli.load_weights_into_model

    def spy(cfg, weights, device):
        loaded.append(Path(weights).name)
        return real(cfg, weights, device)

    monkeypatch.setattr(eval_cli, "load_weights_into_model", spy)
    common = ["--attacks", "clean,pgd-2", "--n", "32", "--quiet", "--split", "test"]
    assert main(["eval", str(ema_run), *common]) == 0
    assert main(["eval", str(ema_run), *common, "--weights", "raw"]) == 0
    assert main(["eval", str(ema_run), *common, "--weights", "ema", "--fresh"]) == 0
    capsys.readouterr()
    assert loaded == [checkpoint.EMA_FILE, checkpoint.MODEL_FILE, checkpoint.EMA_FILE]
    default = json.loads((ema_run / "eval" / "best.json").read_text())
    raw = json.loads((ema_run / "eval" / "best-raw.json").read_text())
    assert default["provenance"]["weights"] == "ema" and raw["provenance"]["weights"] == "raw"


def test_the_library_loads_a_runs_average_too(ema_run):
    """``runs.load_model`` (calibrate-dra, the benchmarks) takes the model eval takes."""
    from adaptrain.runs import load_model

    model, _, _, _ = load_model(str(ema_run), "last", device="cpu")
    avg = checkpoint.load_weights(ema_run / "checkpoints" / "last" / checkpoint.EMA_FILE)
    assert all(torch.equal(v, avg[k]) for k, v in model.state_dict().items())


def test_eval_weights_refusals_are_one_line(ema_run, tmp_path, capsys):
    plain = tmp_path / "plain"
    train_mod.train(build_config("quickstart", [*TINY, "epochs=1"]), plain, **QUIET)
    for argv, mention in ((["eval", str(plain), "--weights", "ema"], "ema.decay=0"),
                          (["eval", str(ema_run), "--weights", "mean"], "allowed: ema, raw")):
        code = main([*argv, "--n", "8", "--attacks", "clean", "--quiet"])
        lines = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith("error: --weights:"), lines
        assert mention in lines[0]
    assert main(["eval", str(plain), "--n", "8", "--attacks", "clean", "--quiet"]) == 0
    assert json.loads((plain / "eval" / "best.json").read_text())["provenance"]["weights"] == "raw"


# ---------------------------------------------------------------------------------------
# torchrun


def test_two_ranks_average_what_one_process_averages(tmp_path):
    """Every rank updates its own average from identical weights; rank 0 writes it. GroupNorm,
    as in test_distributed.py, so that sharding changes no normalisation statistic."""
    from test_distributed import COMMON, WARM, launch, max_diff

    warm = tmp_path / "warm"
    job = ["pgd-at-ema", *COMMON, f"init_from={warm}", "ema.decay=0.9", "--quiet", "--out"]
    done = launch([["train", "standard", *COMMON, *WARM, "--out", str(warm), "--quiet"],
                   ["train", *job, str(tmp_path / "one")]], tmp_path, 1)
    assert done.returncode == 0, done.stderr[-3000:]
    done = launch([["train", *job, str(tmp_path / "two")]], tmp_path, 2)
    assert done.returncode == 0, done.stderr[-3000:]
    one, two = (checkpoint.load_weights(tmp_path / r / "checkpoints" / "last" / checkpoint.EMA_FILE)
                for r in ("one", "two"))
    start = checkpoint.load_weights(warm / "checkpoints" / "last")
    assert max_diff(one, start) > 1e-4  # the average moved
    assert max_diff(one, two) <= 1e-6
    rows = [list(csv.DictReader((tmp_path / r / "metrics.csv").open())) for r in ("one", "two")]
    assert [r["ema_robust_acc"] for r in rows[0]] == [r["ema_robust_acc"] for r in rows[1]]


def test_the_report_shows_the_averaged_weights_the_run_selected_on(ema_run, tmp_path):
    import shutil

    from adaptrain import plots, report

    run = tmp_path / "run"
    # without evaluations the table shows the validation scores the run selected on; another
    # test in this module may have evaluated the shared run already
    shutil.copytree(ema_run, run, ignore=shutil.ignore_patterns("eval"))
    # the tiny run's two weight sets score alike: give the average distinct numbers
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    for k, r in enumerate(rows):
        r["ema_robust_acc"], r["ema_clean_acc"] = str(0.31 + 0.01 * k), str(0.61 + 0.01 * k)
    with (run / "metrics.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    summary = json.loads((run / "summary.json").read_text())
    summary["best"].update(ema_robust_acc=0.4242, ema_clean_acc=0.7373)
    (run / "summary.json").write_text(json.dumps(summary))
    info = report.RunInfo(run)
    row = next(ln for ln in report.table([info]).splitlines() if "| best (" in ln)
    assert "| 73.73 |" in row and "| 42.42 |" in row
    fig = plots.learning_curves([info])
    solid, dashed = (fig.axes[0].lines[k].get_ydata() for k in (0, 1))
    assert list(solid) == pytest.approx([float(r["ema_robust_acc"]) for r in rows])
    assert list(dashed) == pytest.approx([float(r["ema_clean_acc"]) for r in rows])
    assert any("(EMA weights)" in t.get_text() for t in fig.legends[0].get_texts())


def test_fine_tuning_from_an_ema_run_starts_from_the_averaged_weights(ema_run, tmp_path):
    # the run selected its best checkpoint on the average and evaluates it by default: a run
    # initialised from it (e.g. DRA fine-tuning) must start from the same model; a weights
    # file named explicitly is taken as it is
    averaged = checkpoint.load_weights(ema_run / "checkpoints" / "best" / checkpoint.EMA_FILE)
    raw_file = ema_run / "checkpoints" / "best" / checkpoint.MODEL_FILE
    for init, expected in ((ema_run, averaged), (ema_run / "checkpoints" / "best", averaged),
                           (raw_file, checkpoint.load_weights(raw_file))):
        cfg = build_config("quickstart", [*TINY, f"init_from={init}"])
        run = train_mod.setup(cfg, tmp_path / f"ft{len(list(tmp_path.iterdir()))}")
        start = run.model.state_dict()
        assert all(torch.equal(start[k], v) for k, v in expected.items()), init
    assert any(not torch.equal(averaged[k], v) for k, v in checkpoint.load_weights(raw_file).items()
               if v.is_floating_point())
