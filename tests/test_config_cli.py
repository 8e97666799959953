"""``adaptrain config`` and ``train --dry-run``: the resolved config, validated as for a run,
printed without writing anything; model keys of another architecture are refused."""

from __future__ import annotations

import pytest

from adaptrain.cli import main
from adaptrain.config import build_config, load_config_file
from adaptrain.data import load_arrays
from adaptrain.errors import ConfigError
from adaptrain.models import build_model


def printed_config(capsys, tmp_path, *argv: str):
    assert main(["config", *argv]) == 0
    text = capsys.readouterr().out
    path = tmp_path / "printed.yaml"
    path.write_text(text)
    return text, load_config_file(path)


@pytest.mark.parametrize("argv", [["ecas-pgd-at"], ["quickstart", "epochs=3", "model.width=8"],
                                  ["las-trades", "data.name=digits", "strategy.k=2"],
                                  ["saat-up", "log.tensorboard=false"]])
def test_config_prints_what_loads_back_to_the_same_config(capsys, tmp_path, argv):
    text, cfg = printed_config(capsys, tmp_path, *argv)
    assert text.startswith("# adaptrain config " + " ".join(argv))
    assert cfg == build_config(argv[0], argv[1:])


def test_config_shows_every_default_of_the_component(capsys, tmp_path):
    _, cfg = printed_config(capsys, tmp_path, "ecas-pgd-at", "model.width=8")
    # model.width on a WRN is its stem width: the groups are width * widen_factor * (1, 2, 4),
    # so the printed config shows it stays WRN-34-10 (with every channel count halved)
    assert cfg.model == {"name": "wrn", "depth": 34, "widen_factor": 10, "width": 8,
                         "dropout": 0.0, "norm": "batch", "sync_bn": False}


def test_wrn_width_is_the_stem_width_not_ignored():
    spec = load_arrays("digits", None).spec
    narrow = build_model({"name": "wrn", "depth": 10, "widen_factor": 2, "width": 8}, spec)
    wide = build_model({"name": "wrn", "depth": 10, "widen_factor": 2, "width": 16}, spec)
    assert (narrow.feature_dim, wide.feature_dim) == (64, 128)


@pytest.mark.parametrize("argv, field", [
    (["quickstart", "model.widen_factor=2"], "model.widen_factor"),  # a WRN key on small_cnn
    (["standard", "model.depth=34"], "model.depth"),
    (["ecas-pgd-at", "model.blocks=3"], "model.blocks"),
    (["quickstart", "epochs=0"], "epochs"),
    (["dra-finetune"], "init_from"),  # the same refusal as train
])
def test_config_refuses_what_train_refuses_in_one_line(capsys, argv, field):
    assert main(["config", *argv]) == 2
    assert main(["train", *argv, "--dry-run"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    errs = captured.err.strip().splitlines()
    assert len(errs) == 2 and all(e.startswith(f"error: {field}: ") for e in errs), errs


def test_unknown_model_keys_fail_at_validation_naming_the_field():
    with pytest.raises(ConfigError) as exc:
        build_config("pgd-at", ["model.depth=34"])  # a WRN key on a PreAct ResNet-18
    assert exc.value.field == "model.depth"
    assert "unknown field for 'preact_resnet18'; allowed: norm, sync_bn, width" in exc.value.message
    # a new model name starts its section afresh: the WRN's keys do not leak into it
    assert build_config("ecas-pgd-at", ["model.name=preact_resnet18"]).model["name"] == "preact_resnet18"


def test_dry_run_needs_no_out_and_creates_nothing(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "quickstart", "epochs=3", "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "epochs: 3" in text and list(tmp_path.iterdir()) == []
    out = tmp_path / "run"
    assert main(["train", "quickstart", "--out", str(out), "--dry-run"]) == 0
    assert not out.exists()


def test_train_without_out_and_without_dry_run_is_refused(capsys):
    assert main(["train", "quickstart"]) == 2
    assert capsys.readouterr().err.startswith("error: --out: ")


def test_a_resume_may_switch_live_logging_but_nothing_that_changes_training(tmp_path):
    from adaptrain.cli.train import resume_config

    (tmp_path / "config.yaml").write_text(build_config("quickstart").dump())
    assert resume_config(tmp_path, ["log.tensorboard=true", "epochs=40"]).log.tensorboard
    with pytest.raises(ConfigError) as exc:
        resume_config(tmp_path, ["seed=3"])
    assert exc.value.field == "seed"
