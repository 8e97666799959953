"""The quickstart selects its best checkpoint on held-out training digits, so the test digits
that ``adaptrain eval`` reports on were never used to choose it; the report names that split."""

from __future__ import annotations

import json

import torch

from adaptrain.config import build_config
from adaptrain.data import load_arrays, make_splits
from adaptrain.report import RunInfo, table
from adaptrain.train import setup, train
from training_helpers import QUIET


def test_quickstart_validates_on_held_out_training_images(tmp_path):
    cfg = build_config("quickstart")
    arrays = load_arrays(cfg.data.name, cfg.data.root, cfg.data.download)
    n_train = int(arrays.x_train.shape[0])
    assert 0.10 * n_train <= cfg.data.val_size <= 0.15 * n_train
    run = setup(cfg, tmp_path / "run")
    x_val, y_val = run.val
    held = make_splits(arrays, subset=None, val_size=cfg.data.val_size, split_seed=cfg.data.split_seed)
    assert x_val.shape[0] == cfg.eval.n == cfg.data.val_size
    assert torch.equal(x_val, held.x_val) and torch.equal(y_val, held.y_val)
    assert run.ctx.num_train == n_train - cfg.data.val_size  # trained on none of them
    assert not torch.equal(x_val[: arrays.x_test.shape[0]], arrays.x_test[: x_val.shape[0]])


def test_quickstart_run_and_its_report_say_val_and_quickstart_clean_inherits_it(tmp_path):
    assert build_config("quickstart-clean").data.val_size == build_config("quickstart").data.val_size
    out = tmp_path / "q"
    train(build_config("quickstart", ["epochs=1", "data.subset=64", "model.width=4"]), out,
          preset="quickstart", **QUIET)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["eval"]["split"] == "val" and summary["eval"]["n"] == 200
    assert "| q | best (val, pgd-20) |" in table([RunInfo(out)])
