"""What a mistyped command, a diverging run or a second process cannot do to a run directory.

Each test reproduces a reported defect through the command line: a diverged model is never
written and the error names a checkpoint that exists; overrides on --resume work or are
refused in one line; someone else's directory is never overwritten; two processes never
share a run; a failed run leaves nothing behind; a malformed training state is refused.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from adaptrain import checkpoint, fileio
from adaptrain.claim import LOCK
from adaptrain.cli import main

T = ["quickstart", "epochs=2", "data.subset=128", "data.batch_size=64", "model.width=4", "eval.n=32"]


def cli(capsys, *argv: str) -> tuple[int, str]:
    code = main([*argv, "--quiet"] if argv[0] == "train" else list(argv))
    return code, capsys.readouterr().err.strip()


def one_line(err: str, field: str) -> None:
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"error: {field}:"), err
    assert "Traceback" not in err


@pytest.fixture
def run2(tmp_path, capsys) -> Path:
    """A finished two-epoch run."""
    out = tmp_path / "run"
    assert cli(capsys, "train", *T, "--out", str(out))[0] == 0
    return out


def all_finite_checkpoints(out: Path) -> bool:
    for d in (out / "checkpoints").iterdir():
        weights = checkpoint.load_weights(d)
        if not all(torch.isfinite(w.float()).all() for w in weights.values()):
            return False
    return True


def test_a_diverging_run_writes_no_broken_model_and_names_a_checkpoint_that_exists(capsys, tmp_path):
    """The issue's reproduction: a huge learning rate drives BatchNorm running variances to
    inf in epoch 2 while the loss stays finite. Which rate does it depends on the data order:
    lr=50 did under the old two-shuffles-per-epoch stream; under one shuffle per epoch it
    recovers, lr=100 diverges the same way (seeds 0 and 1, one or two threads)."""
    out = tmp_path / "run"
    code, err = cli(capsys, "train", "quickstart", "epochs=3", "data.subset=256", "eval.n=100",
                    "optim.lr=100", "data.val_size=0",  # the split the reproduction was found on
                    "--out", str(out))
    assert code == 1, err
    one_line(err, "training")
    assert "diverged" in err and "running_var" in err
    named = Path(err.split("the last good checkpoint is ")[1].split(" (epoch")[0])
    assert checkpoint.is_complete(named)
    assert f"(epoch {checkpoint.load_state(named)['epoch']})" in err
    assert all_finite_checkpoints(out)


def test_a_run_diverging_in_its_first_epoch_says_no_checkpoint_was_written(capsys, tmp_path, monkeypatch):
    from adaptrain.objectives.pgd_at import PGDAT

    real = PGDAT.loss

    def poisoned(self, *args, **kwargs):
        loss, logits = real(self, *args, **kwargs)
        return loss * float("nan"), logits

    monkeypatch.setattr(PGDAT, "loss", poisoned)
    out = tmp_path / "run"
    code, err = cli(capsys, "train", *T, "--out", str(out))
    assert code == 1
    one_line(err, "training")
    assert "epoch 1, batch 1" in err and "no checkpoint was written" in err
    assert not out.exists()


def test_resume_with_epochs_extends_the_run_and_keeps_its_preset(capsys, run2):
    code, err = cli(capsys, "train", "--resume", str(run2), "epochs=3")
    assert code == 0, err
    summary = json.loads((run2 / "summary.json").read_text())
    assert summary["epochs_completed"] == 3 and summary["finished"]
    assert summary["preset"] == "quickstart"
    assert checkpoint.load_state(run2 / "checkpoints" / "last")["epoch"] == 3


@pytest.mark.parametrize(("override", "field", "mentions"), [
    ("epochs=0", "epochs", ">= 1"),
    ("epochs=1.5", "epochs", "integer"),
    ("epochs=abc", "epochs", "integer"),
    ("epochs=1", "epochs", "already completed 2"),
    ("optim.lr=0.5", "optim", "resuming"),
    ("epochs=1e309", "epochs", ""),
])
def test_bad_resume_overrides_are_refused_and_leave_the_run_usable(capsys, run2, override, field, mentions):
    before = {p.name: p.read_bytes() for p in run2.iterdir() if p.is_file() and p.name != LOCK}
    code, err = cli(capsys, "train", "--resume", str(run2), override)
    assert code == 2, err
    one_line(err, field)
    assert mentions in err
    assert {p.name: p.read_bytes() for p in run2.iterdir() if p.is_file() and p.name != LOCK} == before
    assert cli(capsys, "train", "--resume", str(run2))[0] == 0  # still resumable


def test_a_preset_with_resume_is_refused(capsys, run2):
    code, err = cli(capsys, "train", "quickstart", "--resume", str(run2))
    assert code == 2
    one_line(err, "--resume")


def test_a_directory_that_is_not_a_run_is_never_overwritten(capsys, tmp_path):
    mine = tmp_path / "U"
    mine.mkdir()
    (mine / "config.yaml").write_text("mine\n")
    code, err = cli(capsys, "train", *T, "--out", str(mine))
    assert code == 2
    one_line(err, "--out")
    assert (mine / "config.yaml").read_text() == "mine\n"
    assert sorted(p.name for p in mine.iterdir()) == ["config.yaml"]
    code, err = cli(capsys, "train", "--resume", str(mine))
    assert code == 2
    one_line(err, "--resume")


def test_a_second_process_on_the_same_run_directory_is_refused(capsys, tmp_path, run2):
    new = tmp_path / "new"
    for argv, out in ((["train", *T, "--out", str(new)], new), (["train", "--resume", str(run2)], run2)):
        with fileio.exclusive_lock(out / LOCK, what="test", holder="test"):
            code, err = cli(capsys, *argv)
        assert code == 2, err
        one_line(err, "--out")
        assert "in use by another adaptrain process" in err
    assert sorted(p.name for p in new.iterdir()) == [LOCK]  # the refused run wrote nothing


def test_a_run_that_fails_before_its_first_checkpoint_leaves_nothing_behind(capsys, tmp_path):
    new = tmp_path / "new"
    code, err = cli(capsys, "train", *T, "data.subset=999999", "--out", str(new))
    assert code == 2 and "data.subset" in err
    assert not new.exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    code, err = cli(capsys, "train", *T, "data.subset=999999", "--out", str(empty))
    assert code == 2
    assert empty.is_dir() and list(empty.iterdir()) == []  # it was there before: kept, emptied


def test_a_malformed_training_state_is_refused_in_one_line(capsys, run2):
    state = run2 / "checkpoints" / "last" / checkpoint.STATE_FILE
    for bad in ({"epoch": 2}, {"epoch": 2, "history": 5}, [1, 2, 3]):
        torch.save(bad, state)
        code, err = cli(capsys, "train", "--resume", str(run2), "epochs=3")
        assert code == 2, (bad, err)
        one_line(err, "checkpoint")


def test_dry_run_prints_the_resolved_config_and_writes_nothing(capsys, tmp_path):
    out = tmp_path / "never"
    assert main(["train", *T, "--out", str(out), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "epochs: 2" in printed and "name: small_cnn" in printed
    assert not out.exists()


@pytest.mark.parametrize("argv", [["train", "quickstart", "--bogus"], ["eval", "x", "--bf16=1"],
                                  ["frob"], [], ["train", "quickstart", "--out"]])
def test_a_malformed_command_line_is_one_line_not_a_usage_block(capsys, argv):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: adaptrain"), err
