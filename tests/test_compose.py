"""Everything composes: single-step attacks, FAT, GradAlign and AWP with every objective, one
epoch each on a tiny digits subset, through the real training loop."""

from __future__ import annotations

import math

import pytest

from adaptrain.config import build_config, preset_names
from adaptrain.train import train
from training_helpers import QUIET, assert_same_last_weights, interrupted_and_resumed

TINY = ["epochs=1", "data.subset=128", "model.width=4", "eval.n=32", "data.batch_size=64"]


@pytest.mark.slow
@pytest.mark.parametrize("overrides", [
    ["attack.name=fgsm_rs", "awp.gamma=0.01"],
    ["objective.name=trades", "awp.gamma=0.01"],
    ["objective.name=mart", "awp.gamma=0.01"],
    ["attack.name=n_fgsm", "regularizer.name=gradalign"],
    ["attack.name=fgsm", "regularizer.name=gradalign", "objective.name=trades", "awp.gamma=0.01"],
    ["strategy.name=fat", "strategy.eps=0.1", "strategy.step_size=0.025", "objective.name=mart"],
], ids=["fgsm_rs+awp", "trades+awp", "mart+awp", "n_fgsm+gradalign", "trades+fgsm+gradalign+awp",
        "fat+mart"])
def test_one_epoch_trains(tmp_path, overrides):
    cfg = build_config("quickstart", [*TINY, *overrides])
    summary = train(cfg, tmp_path, **QUIET)
    assert summary["epochs_completed"] == 1
    last = summary["last"]
    assert 0 <= last["robust_acc"] <= last["clean_acc"] <= 1
    rows = (tmp_path / "metrics.csv").read_text().splitlines()
    loss = float(rows[1].split(",")[rows[0].split(",").index("train_loss")])
    assert math.isfinite(loss)


NEW = ["awp", "trades-awp", "fat", "fat-trades", "fgsm-rs", "fgsm-rs-6", "fgsm-rs-10", "n-fgsm",
       "n-fgsm-6", "n-fgsm-10", "gradalign", "gradalign-6", "gradalign-10"]


def test_every_new_preset_builds_and_takes_awp():
    assert set(NEW) <= set(preset_names())
    for name in NEW:
        assert build_config(name, ["awp.gamma=0.01"]).awp.gamma == 0.01


@pytest.mark.parametrize(("eps", "lam"), [(6, 0.112), (8, 0.2), (10, 0.356)])
def test_single_step_presets_at_each_budget(eps, lam):
    suffix = "" if eps == 8 else f"-{eps}"
    for family, attack in (("fgsm-rs", "fgsm_rs"), ("n-fgsm", "n_fgsm"), ("gradalign", "fgsm")):
        c = build_config(family + suffix)
        assert c.attack["name"] == attack
        assert c.strategy["eps"] == pytest.approx(eps / 255) and c.strategy["steps"] == 1
        assert c.eval.eps == pytest.approx(eps / 255)
        assert (c.epochs, c.optim.schedule, c.optim.lr) == (30, "onecycle", 0.2)
        assert c.model["name"] == "preact_resnet18"
        if family == "gradalign":
            assert c.regularizer == {"name": "gradalign", "lam": lam, "detach_clean": False}
        else:
            assert c.regularizer["name"] == "none"
    assert build_config("fgsm-rs").attack["step"] == 1.25
    assert build_config("n-fgsm").attack["k"] == 2.0


@pytest.mark.slow
def test_interrupted_and_resumed_gradalign_fat_run_equals_uninterrupted(tmp_path, monkeypatch):
    # GradAlign's eta generator and FAT's epoch-dependent tau must survive a checkpoint
    over = [*TINY, "epochs=2", "data.subset=64", "eval.n=16", "data.batch_size=32", "strategy.name=fat",
            "strategy.eps=0.1", "strategy.step_size=0.025", "strategy.steps=3", "strategy.tau=[0, 1]",
            "strategy.tau_epochs=[1]", "regularizer.name=gradalign"]
    interrupted_and_resumed(tmp_path, lambda: build_config("quickstart", over), monkeypatch, after=1)
    assert_same_last_weights(tmp_path / "full", tmp_path / "cut")
    tel = (tmp_path / "cut" / "strategy.csv").read_text().splitlines()
    assert tel[0].split(",")[:2] == ["epoch", "tau"] and [r.split(",")[1] for r in tel[1:]] == ["0.0", "1.0"]
