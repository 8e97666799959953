"""Progress in plain logs: with stdout not a terminal, training and evaluation print a line
(done/total, img/s, ETA) at most every ``logprogress.EVERY`` seconds; the epoch line ends
with the strategy's summary and the time left."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys

import torch

from adaptrain import logprogress
from adaptrain.config import build_config
from adaptrain.evaluate import EvalSettings, evaluate
from adaptrain.logprogress import Lines, duration, progress
from adaptrain.train import train

TINY = ["epochs=2", "data.subset=128", "data.batch_size=32", "model.width=4", "eval.n=32",
        "device=cpu"]
LINE = re.compile(r"^epoch 1/2: (\d+)/4 batch \(\d+%\), [\d.]+ img/s, ETA \d+s$")


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_lines_come_at_the_bounded_rate_with_rate_and_eta():
    clock, out = Clock(), io.StringIO()
    bar = Lines(100, "epoch 3/9", unit="img", stream=out, every=10.0, clock=clock)
    for _ in range(35):  # one image per second for 35 s
        clock.t += 1.0
        bar.update(1)
    lines = out.getvalue().splitlines()
    assert lines == ["epoch 3/9: 10/100 img (10%), 1.0 img/s, ETA 1m30s",
                     "epoch 3/9: 20/100 img (20%), 1.0 img/s, ETA 1m20s",
                     "epoch 3/9: 30/100 img (30%), 1.0 img/s, ETA 1m10s"]


def test_batches_count_images_for_the_rate():
    clock, out = Clock(), io.StringIO()
    bar = Lines(4, "epoch 1/1", unit="batch", stream=out, every=0.0, clock=clock)
    clock.t = 2.0
    bar.update(1, images=64)
    assert out.getvalue().strip() == "epoch 1/1: 1/4 batch (25%), 32.0 img/s, ETA 6s"


def test_durations():
    assert [duration(s) for s in (0, 12.4, 185, 3725)] == ["0s", "12s", "3m05s", "1h02m"]


def test_a_pipe_gets_lines_a_quiet_run_nothing(capsys):
    assert isinstance(progress(10, "x", None), Lines)  # capsys: stdout is not a terminal
    quiet = progress(10, "x", False)
    quiet.update(5)
    quiet.close()
    assert capsys.readouterr().out == ""


def test_the_interval_env_variable(monkeypatch):
    monkeypatch.setenv("ADAPTRAIN_PROGRESS_EVERY", "2.5")
    assert logprogress.interval() == 2.5
    monkeypatch.setenv("ADAPTRAIN_PROGRESS_EVERY", "soon")
    assert logprogress.interval() == logprogress.EVERY


def test_training_prints_progress_lines_and_an_eta_without_a_terminal(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(logprogress, "EVERY", 0.0)  # a line after every batch
    lines: list[str] = []
    train(build_config("quickstart", TINY), tmp_path / "run", progress=None, log=lines.append)
    printed = capsys.readouterr().out.splitlines()
    done = [int(m[1]) for p in printed if (m := LINE.match(p))]
    assert done == [1, 2, 3, 4], printed
    assert re.search(r"  \|  ETA \d+s$", lines[0]), lines  # one epoch left
    assert "ETA" not in lines[1], lines  # the last epoch has none


def test_the_default_interval_keeps_a_short_epoch_silent(tmp_path, capsys):
    train(build_config("quickstart", TINY), tmp_path / "run", progress=None, log=lambda s: None)
    assert not any(LINE.match(p) for p in capsys.readouterr().out.splitlines())


def test_evaluation_prints_progress_lines(capsys, monkeypatch):
    monkeypatch.setattr(logprogress, "EVERY", 0.0)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    x, y = torch.rand(20, 3, 2, 2), torch.randint(0, 3, (20,))
    evaluate(model, x, y, EvalSettings(attacks=("clean",), batch_size=8), progress=None)
    printed = [p for p in capsys.readouterr().out.splitlines() if p.startswith("clean: ")]
    assert [p.split(" img")[0] for p in printed] == ["clean: 8/20", "clean: 16/20", "clean: 20/20"]


def test_a_cli_run_into_a_pipe_shows_progress(tmp_path):
    env = {**os.environ, "ADAPTRAIN_PROGRESS_EVERY": "0", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "adaptrain", "train", "quickstart", *TINY,
                           "--out", str(tmp_path / "run")], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert sum(bool(LINE.match(p)) for p in proc.stdout.splitlines()) == 4, proc.stdout


class CountingIterable:
    """Counts ``iter`` calls: the training loader draws an epoch's shuffle at each."""

    def __init__(self) -> None:
        self.iters = 0

    def __len__(self) -> int:
        return 3

    def __iter__(self):
        self.iters += 1
        return iter([torch.zeros(2), torch.zeros(2), torch.zeros(2)])


def test_an_epoch_draws_the_loader_once_whatever_shows_progress(capsys):
    # each iter() of the training loader draws an epoch's shuffle: the progress display must
    # not draw one more (tqdm's constructor calls iter() on what it wraps), or the data stream
    # would depend on a progress library's internals
    for enabled in (None, False, True):  # None: stdout is a pipe here, so plain lines
        items = CountingIterable()
        assert len(list(logprogress.track(items, 3, "e", enabled, images=len))) == 3
        assert items.iters == 1, enabled
