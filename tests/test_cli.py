"""Command line: one-line errors with exit code 2 before any work, and the quickstart end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from adaptrain.cli import main

ROOT = Path(__file__).resolve().parents[1]


def errors(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    err = capsys.readouterr().err.strip()
    return code, err


@pytest.mark.parametrize(
    ("argv", "field", "mentions"),
    [
        (("train", "no-such-preset"), "preset", "quickstart"),
        (("train", "quickstart", "model.name=vgg"), "model.name", "small_cnn"),
        (("train", "quickstart", "data.name=imagenet"), "data.name", "digits"),
        (("train", "quickstart", "strategy.name=magic"), "strategy.name", "fixed"),
        (("train", "quickstart", "strategy.eps=-0.1"), "strategy.eps", ">= 0"),
        (("train", "quickstart", "strategy.steps=0"), "strategy.steps", ">= 1"),
        (("train", "quickstart", "strategy.stepz=3"), "strategy.stepz", "allowed"),
        (("train", "quickstart", "optim.schedule=zigzag"), "optim.schedule", "cosine"),
        (("train", "quickstart", "epochs=two"), "epochs", "integer"),
        (("train", "quickstart", "data.subset=999999"), "data.subset", "larger"),
        (("train", "quickstart", "eval.attack=pgd-x"), "eval.attack", "pgd-K"),
        (("train", "quickstart", "regularizer.name=magic"), "regularizer.name", "none"),
    ],
)
def test_bad_input_is_one_line_naming_the_field(capsys, tmp_path, argv, field, mentions):
    out = tmp_path / "run"
    code, err = errors(capsys, *argv, "--out", str(out))
    assert code == 2
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"error: {field}:"), err
    assert mentions in err
    assert not (out / "checkpoints").exists()  # no work was done


def test_unwritable_output_directory(capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    code, err = errors(capsys, "train", "quickstart", "--out", str(blocker / "run"))
    assert code == 2 and err.startswith("error: --out:") and len(err.splitlines()) == 1


def test_existing_run_is_not_overwritten(capsys, tmp_path):
    from adaptrain.config import build_config

    (tmp_path / "config.yaml").write_text(build_config("quickstart").dump())
    (tmp_path / "checkpoints").mkdir()
    code, err = errors(capsys, "train", "quickstart", "--out", str(tmp_path))
    assert code == 2 and "--resume" in err


def test_eval_refuses_a_malicious_checkpoint(capsys, tmp_path):
    import pickle

    class Boom:
        def __reduce__(self):
            return (os.system, ("touch /tmp/adaptrain-pwned-cli",))

    bad = tmp_path / "evil.pt"
    bad.write_bytes(pickle.dumps({"w": Boom()}))
    code, err = errors(capsys, "eval", str(bad), "--config", "quickstart")
    assert code == 2 and "refusing" in err and len(err.splitlines()) == 1
    assert not os.path.exists("/tmp/adaptrain-pwned-cli")


@pytest.mark.parametrize(("argv", "field"), [
    (("--attacks", "clean,pgd-x"), "--attacks"),
    (("--eps", "-1"), "--eps"),
    (("--eps-curve", "0,abc"), "--eps-curve"),
    (("--attacks", "aa", "--aa-version", "custom"), "--aa-attacks"),
    (("--step-size", "eps/zero"), "--step-size"),
    (("--n", "0"), "--n"),
])
def test_eval_bad_arguments_are_one_line_naming_the_option(capsys, tmp_path, argv, field):
    code, err = errors(capsys, "eval", str(tmp_path / "nothing-here"), *argv)
    assert code == 2 and err.startswith(f"error: {field}:") and len(err.splitlines()) == 1, err


def test_presets_lists_every_preset_with_a_description(capsys):
    assert main(["presets"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    names = {line.split()[0] for line in lines}
    assert {"quickstart", "pgd-at", "trades", "mart"} <= names
    assert all(len(line.split(maxsplit=1)) == 2 for line in lines)


@pytest.mark.slow
def test_quickstart_end_to_end_in_a_subprocess(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    out = tmp_path / "qs"
    cmd = [sys.executable, "-m", "adaptrain.cli", "train", "quickstart", "--out", str(out), "epochs=3"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "epoch 3/3" in proc.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["finished"] and summary["best_epoch"] in (1, 2, 3)
    proc = subprocess.run([sys.executable, "-m", "adaptrain.cli", "eval", str(out), "--attacks",
                           "clean,pgd-10,cw-10", "--n", "100", "--no-cascade",
                           "--eps-curve", "0,0.05,0.1", "--quiet"], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    result = json.loads((out / "eval" / "best.json").read_text())
    assert result["n_examples"] == 100 and result["norm"] == "linf"
    acc = result["accuracy"]
    assert set(acc) == {"clean", "pgd-10", "cw-10"}
    assert 0 <= acc["pgd-10"] <= acc["clean"] and 0 <= acc["cw-10"] <= acc["clean"]
    assert {"adaptrain", "torch", "autoattack", "seed", "n"} <= set(result["provenance"])
    assert result["mode"] == "independent"
    assert result["worst_case"] <= min(acc["pgd-10"], acc["cw-10"])
    assert result["curve"]["eps"] == [0, 0.05, 0.1] and result["curve"]["accuracy"][0] == acc["clean"]
    assert result["rd"] is not None and {c["name"] for c in result["checks"]} >= {
        "robust <= clean", "accuracy non-increasing in eps", "no zero input gradients"}
    assert (out / "eval" / "best.md").read_text().startswith("Evaluation of")
    assert (out / "eval" / "best.curve.png").stat().st_size > 1000
    assert not (out / "eval" / "best.state.json").exists()  # removed once complete


def test_every_preset_builds_a_valid_config():
    from adaptrain.config import build_config, preset_names

    for name in preset_names():
        cfg = build_config(name)
        assert cfg.description, name
        assert cfg.epochs >= 1


def test_on_off_fields_accept_on_and_off_on_the_command_line():
    from adaptrain.config import build_config

    cfg = build_config("quickstart", ["eval.fgsm=on", "channels_last=off"])
    assert cfg.eval.fgsm == "on" and cfg.channels_last == "off"


def test_saat_runs_get_an_eps_curve_and_rd_by_default(tmp_path):
    from adaptrain.config import build_config
    from adaptrain.train import train

    run_dir = tmp_path / "saat"
    over = ["epochs=1", "data.subset=64", "model.width=4", "eval.n=16", "strategy.name=saat",
            "strategy.eps_max=0.2", "attack.tau=0.05", "strategy.step_size=0.05",
            "attack.name=sa_pgd"]
    train(build_config("quickstart", over), run_dir, progress=False, log=lambda line: None)
    assert main(["eval", str(run_dir), "--n", "20", "--attacks", "clean,pgd-3", "--quiet"]) == 0
    result = json.loads((run_dir / "eval" / "best.json").read_text())
    assert result["curve"]["eps"][0] == 0 and len(result["curve"]["eps"]) == 6
    assert result["rd"] is not None
