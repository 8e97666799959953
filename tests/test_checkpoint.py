"""Checkpoints: safetensors weights, weights-only state, atomic writes, unsafe payloads refused."""

from __future__ import annotations

import os
import pickle

import pytest
import torch
from torch import nn

from adaptrain import checkpoint
from adaptrain.errors import CheckpointError


class Boom:
    """Unpickling this would run a shell command: a checkpoint carrying it must be refused."""

    def __reduce__(self):
        return (os.system, ("touch /tmp/adaptrain-pwned",))


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))


def test_round_trip_weights_and_state(tmp_path):
    m = model()
    gen = torch.Generator().manual_seed(3)
    state = {"epoch": 4, "gen": gen.get_state(), "nested": {"a": [1, 2.5, "x"], "t": torch.ones(2)}}
    checkpoint.save(tmp_path / "last", m, state)
    other = model()
    with torch.no_grad():
        for p in other.parameters():
            p.add_(1.0)
    checkpoint.load_into(other, tmp_path / "last")
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), other.state_dict().values(),
                                                 strict=True))
    loaded = checkpoint.load_state(tmp_path / "last")
    assert loaded["epoch"] == 4 and loaded["nested"]["a"] == [1, 2.5, "x"]
    assert torch.equal(loaded["gen"], gen.get_state())


def test_pickle_payload_in_state_is_refused_without_running_it(tmp_path):
    target = "/tmp/adaptrain-pwned"
    if os.path.exists(target):
        os.remove(target)
    checkpoint.save(tmp_path / "ck", model(), {"epoch": 1})
    with open(tmp_path / "ck" / checkpoint.STATE_FILE, "wb") as fh:
        pickle.dump({"epoch": 1, "evil": Boom()}, fh)
    with pytest.raises(CheckpointError) as err:
        checkpoint.load_state(tmp_path / "ck")
    assert "refusing" in str(err.value)
    assert not os.path.exists(target)


def test_pickle_weights_file_is_refused(tmp_path):
    bad = tmp_path / "weights.pt"
    with open(bad, "wb") as fh:
        pickle.dump({"fc.weight": Boom()}, fh)
    with pytest.raises(CheckpointError):
        checkpoint.load_weights(bad)
    fake = tmp_path / "model.safetensors"
    fake.write_bytes(pickle.dumps(Boom()))
    with pytest.raises(CheckpointError):
        checkpoint.load_weights(fake)
    assert not os.path.exists("/tmp/adaptrain-pwned")


def test_plain_tensor_pt_weights_are_accepted(tmp_path):
    m = model()
    torch.save({"state_dict": m.state_dict()}, tmp_path / "w.pt")
    other = model()
    checkpoint.load_into(other, tmp_path / "w.pt")
    assert torch.equal(other[0].weight, m[0].weight)


def test_crash_while_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    m = model()
    checkpoint.save(tmp_path / "last", m, {"epoch": 1})

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with torch.no_grad():
        m[0].weight.add_(1.0)
    with pytest.raises(OSError):
        checkpoint.save(tmp_path / "last", m, {"epoch": 2})
    assert checkpoint.load_state(tmp_path / "last")["epoch"] == 1
    assert not torch.equal(checkpoint.load_weights(tmp_path / "last")["0.weight"], m[0].weight)
    assert [p.name for p in tmp_path.iterdir()] == ["last"]  # no temporary debris


def test_mismatched_model_gives_a_one_line_error(tmp_path):
    checkpoint.save(tmp_path / "ck", model())
    other = nn.Sequential(nn.Linear(2, 2))
    with pytest.raises(CheckpointError) as err:
        checkpoint.load_into(other, tmp_path / "ck")
    assert "\n" not in str(err.value) and "does not fit" in str(err.value)
