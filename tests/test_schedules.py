"""Learning-rate schedules as pure functions of the fractional epoch t = epoch + (batch + 1) / nb."""

from __future__ import annotations

import math

import pytest

from adaptrain.errors import ConfigError
from adaptrain.schedules import first_decay_epoch, make_schedule


def at(fn, epoch: int, batch: int, nb: int = 10) -> float:
    return fn(epoch + (batch + 1) / nb)


def test_multistep_decays_from_the_milestone_epoch_on():
    fn = make_schedule("multistep", 0.1, 10, milestones=[4, 7], gamma=0.1)
    assert at(fn, 3, 9) == pytest.approx(0.1)  # the last batch of epoch 3 (t = 4.0) is not decayed
    assert at(fn, 4, 0) == pytest.approx(0.01)
    assert at(fn, 6, 9) == pytest.approx(0.01) and at(fn, 7, 0) == pytest.approx(0.001)
    assert first_decay_epoch("multistep", 10, milestones=[7, 4]) == 4


def test_piecewise_follows_rice_et_al():
    fn = make_schedule("piecewise", 0.1, 200)
    assert fn(99.5) == 0.1 and fn(100.5) == pytest.approx(0.01) and fn(150.5) == pytest.approx(0.001)
    assert first_decay_epoch("piecewise", 200) == 100


def test_cosine_onecycle_and_constant():
    cos = make_schedule("cosine", 0.2, 10)
    assert cos(0) == pytest.approx(0.2) and cos(5) == pytest.approx(0.1) and cos(10) == pytest.approx(0)
    one = make_schedule("onecycle", 0.2, 10, peak_at=0.4)
    assert one(0) == 0 and one(2) == pytest.approx(0.1) and one(4) == pytest.approx(0.2)
    assert one(7) == pytest.approx(0.1) and one(10) == pytest.approx(0)
    assert first_decay_epoch("onecycle", 10, peak_at=0.4) == math.ceil(4)
    assert make_schedule("constant", 0.3, 10)(7.3) == 0.3
    assert first_decay_epoch("constant", 10) is None and first_decay_epoch("cosine", 10) is None


def test_unknown_schedule_names_the_field():
    with pytest.raises(ConfigError, match="optim.schedule"):
        make_schedule("zigzag", 0.1, 10)
