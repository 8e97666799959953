"""Shared test helpers for end-to-end training: quiet runs and the interrupt-and-resume check."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from adaptrain import checkpoint
from adaptrain import train as train_mod
from adaptrain.config import Config

QUIET = {"progress": False, "log": lambda line: None}


def interrupted_and_resumed(tmp: Path, make_cfg: Callable[[], Config], monkeypatch,
                            after: int) -> tuple[Path, Path]:
    """Train ``make_cfg()`` into tmp/full; train it again into tmp/cut, interrupted (as by
    Ctrl-C) after ``after`` completed epochs and resumed with ``--resume``. -> (full, cut)."""
    full, cut = tmp / "full", tmp / "cut"
    train_mod.train(make_cfg(), full, **QUIET)
    real = train_mod.write_outputs

    def interrupt(run, *args, **kwargs):  # after the tables of epoch ``after`` are written
        out = real(run, *args, **kwargs)
        if len(run.history) == after:
            raise KeyboardInterrupt
        return out

    monkeypatch.setattr(train_mod, "write_outputs", interrupt)
    with pytest.raises(KeyboardInterrupt):
        train_mod.train(make_cfg(), cut, **QUIET)
    monkeypatch.setattr(train_mod, "write_outputs", real)
    train_mod.train(make_cfg(), cut, resume=True, **QUIET)
    return full, cut


def assert_same_last_weights(a: Path, b: Path) -> None:
    wa = checkpoint.load_weights(a / "checkpoints" / "last")
    wb = checkpoint.load_weights(b / "checkpoints" / "last")
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
