"""End-to-end training on the embedded digits data: robustness gain, exact resume, NaN stop."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from adaptrain import checkpoint
from adaptrain import train as train_mod
from adaptrain.config import build_config
from adaptrain.errors import TrainingError
from adaptrain.train import train
from training_helpers import QUIET, assert_same_last_weights, interrupted_and_resumed


def run(tmp: Path, preset: str, *overrides: str) -> dict:
    cfg = build_config(preset, list(overrides))
    return train(cfg, tmp, preset=preset, **QUIET)


@pytest.mark.slow
def test_pgd_at_on_digits_is_far_more_robust_than_clean_training(tmp_path):
    common = ("epochs=8", "eval.n=360")
    robust = run(tmp_path / "at", "quickstart", *common)
    clean = run(tmp_path / "clean", "quickstart-clean", *common)
    assert clean["last"]["clean_acc"] > 0.9  # the baseline is a competent classifier
    assert robust["last"]["robust_acc"] >= clean["last"]["robust_acc"] + 0.25
    for summary in (robust, clean):
        assert 0.0 <= summary["last"]["robust_acc"] <= summary["last"]["clean_acc"] <= 1.0


def test_run_directory_follows_the_output_contract(tmp_path):
    s = run(tmp_path, "quickstart", "epochs=2", "data.subset=256", "model.width=4", "eval.n=64")
    for name in ("config.yaml", "metrics.csv", "summary.json", "checkpoints/last/model.safetensors",
                 "checkpoints/last/state.pt", "checkpoints/best/model.safetensors"):
        assert (tmp_path / name).is_file(), name
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk == json.loads(json.dumps(s))
    assert set(on_disk) >= {"best_epoch", "best", "last", "wall_time_s", "versions"}
    for key in ("best", "last"):
        assert set(on_disk[key]) >= {"clean_acc", "robust_acc"}
        assert 0 <= on_disk[key]["robust_acc"] <= on_disk[key]["clean_acc"] <= 1
    rows = (tmp_path / "metrics.csv").read_text().strip().splitlines()
    assert len(rows) == 3 and rows[0].startswith("epoch,lr,train_loss,train_acc")


def test_interrupted_and_resumed_run_equals_uninterrupted(tmp_path, monkeypatch):
    over = ["epochs=4", "data.subset=256", "model.width=4", "eval.n=64", "data.batch_size=32"]
    full, cut = interrupted_and_resumed(tmp_path, lambda: build_config("quickstart", over),
                                        monkeypatch, after=2)
    assert_same_last_weights(full, cut)
    ma = (tmp_path / "full" / "metrics.csv").read_text().splitlines()
    mb = (tmp_path / "cut" / "metrics.csv").read_text().splitlines()
    # wall times differ; epoch, lr, loss and accuracy must not
    assert [r.split(",")[:4] for r in ma] == [r.split(",")[:4] for r in mb]


def test_non_finite_loss_stops_with_a_clear_error_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    over = ("epochs=3", "data.subset=128", "model.width=4", "eval.n=32", "data.batch_size=64")
    from adaptrain.objectives.pgd_at import PGDAT

    real = PGDAT.loss
    state = {"calls": 0}

    def poisoned(self, model, batch, x_adv, plan, *, commit=True):
        loss, logits = real(self, model, batch, x_adv, plan, commit=commit)
        state["calls"] += 1
        if batch.step.epoch == 1:
            loss = loss * float("nan")
        return loss, logits

    monkeypatch.setattr(PGDAT, "loss", poisoned)
    with pytest.raises(TrainingError) as err:
        run(tmp_path, "quickstart", *over)
    assert "non-finite" in str(err.value) and "epoch 2" in str(err.value)
    state_dict = checkpoint.load_state(tmp_path / "checkpoints" / "last")
    assert state_dict["epoch"] == 1
    weights = checkpoint.load_weights(tmp_path / "checkpoints" / "last")
    assert all(torch.isfinite(w.float()).all() for w in weights.values())


def test_single_step_training_watches_fgsm_accuracy_and_warns_of_catastrophic_overfitting(
        tmp_path, monkeypatch):
    lines: list[str] = []
    over = ["epochs=2", "data.name=digits", "data.val_size=0", "data.subset=256", "model.name=small_cnn",
            "model.width=4", "eval.n=64", "strategy.eps=0.1", "eval.eps=0.1", "eval.step_size=0.02"]
    fired = {"n": 0}

    def detector(history):
        assert "fgsm_acc" in history[-1] and "robust_acc" in history[-1]
        fired["n"] += 1
        return "catastrophic overfitting suspected (test)" if fired["n"] == 2 else None

    monkeypatch.setattr(train_mod, "catastrophic_overfitting", detector)
    train(build_config("fgsm-rs", over), tmp_path / "fast", progress=False, log=lines.append)
    assert any(line.startswith("WARNING: catastrophic overfitting") for line in lines)
    header, first, second = (tmp_path / "fast" / "metrics.csv").read_text().strip().splitlines()
    cols = header.split(",")
    assert "fgsm_acc" in cols
    flag = cols.index("catastrophic_overfitting")
    assert first.split(",")[flag] == "0.0" and second.split(",")[flag] == "1.0"
    # multi-step training does not pay for the FGSM evaluation unless asked
    monkeypatch.undo()
    train(build_config("quickstart", ["epochs=1", "data.subset=128", "model.width=4", "eval.n=32"]),
          tmp_path / "pgd", progress=False, log=lines.append)
    assert "fgsm_acc" not in (tmp_path / "pgd" / "metrics.csv").read_text().splitlines()[0]


def test_compile_field_routes_the_training_step_through_torch_compile(tmp_path, monkeypatch):
    compiled = []

    def fake_compile(model, **kwargs):  # compiling for real takes minutes on this CPU
        compiled.append((model, kwargs))
        return model

    monkeypatch.setattr(torch, "compile", fake_compile)
    over = ["epochs=1", "data.subset=64", "model.width=4", "eval.n=16", "compile=true"]
    run(tmp_path, "quickstart", *over)
    assert len(compiled) == 1 and compiled[0][1] == {"dynamic": True}
    assert (tmp_path / "checkpoints" / "last" / "model.safetensors").is_file()
