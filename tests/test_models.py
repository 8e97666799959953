"""Model registry tests: every registered architecture is checked against the contract in
``adaptrain.models.base`` (shapes, features/head split, normalisation inside, determinism,
input gradients, channels_last), plus full-size parameter counts and config errors."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F

from adaptrain.data.base import DataSpec
from adaptrain.errors import ConfigError
from adaptrain.models import MODELS, ImageClassifier, build_model

NAMES = MODELS.names()
# extra fields that keep a model tiny (a model added later defaults to width 4 if it has one)
TINY: dict[str, dict[str, Any]] = {"wrn": {"depth": 10, "widen_factor": 2}}


def spec(channels: int = 3, size: int = 32, classes: int = 7, mean: float = 0.0, std: float = 1.0):
    return DataSpec("test", classes, channels, (size, size), (mean,) * channels, (std,) * channels)


def tiny(name: str, width: int = 4, **kwargs: Any) -> dict[str, Any]:
    section: dict[str, Any] = {"name": name, **TINY.get(name, {}), **kwargs}
    if "width" in MODELS.get(name).params():
        section["width"] = width
    return section


def build(name: str, channels: int = 3, size: int = 32, **kwargs: Any) -> ImageClassifier:
    torch.manual_seed(0)
    return build_model(tiny(name, **kwargs), spec(channels, size))


def images(channels: int = 3, size: int = 32, batch: int = 2) -> torch.Tensor:
    return torch.rand(batch, channels, size, size, generator=torch.Generator().manual_seed(1))


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", NAMES)
def test_registered_with_description(name: str) -> None:
    assert MODELS.get(name).description


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(("channels", "size"), [(3, 32), (1, 28), (1, 8), (3, 64)])
def test_shapes_and_head(name: str, channels: int, size: int) -> None:
    model = build(name, channels, size).eval()
    x = images(channels, size)
    with torch.no_grad():
        logits = model(x)
        feats = model.features(x)
        assert logits.shape == (2, 7)
        assert feats.shape == (2, model.feature_dim)
        assert model.head.in_features == model.feature_dim
        torch.testing.assert_close(logits, model.head(feats), rtol=0, atol=0)
        assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name", NAMES)
def test_normalisation_inside(name: str) -> None:
    m, s = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    torch.manual_seed(0)
    a = build_model(tiny(name), DataSpec("a", 7, 3, (32, 32), m, s)).eval()
    b = build_model(tiny(name), spec()).eval()
    state = {k: v for k, v in a.state_dict().items() if k not in ("mean", "std")}
    b.load_state_dict(state, strict=False)
    x = images()
    z = (x - torch.tensor(m).view(1, 3, 1, 1)) / torch.tensor(s).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(z), rtol=1e-5, atol=1e-5)
        assert not torch.allclose(a(x), b(x), atol=1e-4)


@pytest.mark.parametrize("name", NAMES)
def test_width_changes_size(name: str) -> None:
    if "width" not in MODELS.get(name).params():
        pytest.skip("no width field")
    with torch.device("meta"):
        narrow = build_model(tiny(name, width=4), spec())
        wide = build_model(tiny(name, width=8), spec())
    assert n_params(wide) > n_params(narrow)


@pytest.mark.parametrize("name", NAMES)
def test_eval_deterministic_and_train_mode(name: str) -> None:
    model = build(name)
    x = images()
    model.train()
    with torch.no_grad():
        model(x)  # BN running statistics change in train mode
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x), rtol=0, atol=0)


def test_wrn_dropout_off_in_eval() -> None:
    model = build("wrn", dropout=0.3).eval()
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x), rtol=0, atol=0)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_gradients_reach_input(name: str, mode: str) -> None:
    model = build(name).train(mode == "train")
    x = images().requires_grad_(True)
    F.cross_entropy(model(x), torch.tensor([0, 1])).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


@pytest.mark.parametrize("name", NAMES)
def test_channels_last(name: str) -> None:
    model = build(name).eval()
    x = images()
    with torch.no_grad():
        ref = model(x)
        model = model.to(memory_format=torch.channels_last)
        out = model(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("section", "millions", "tol"),
    [
        ({"name": "preact_resnet18"}, 11.17, 0.02),
        ({"name": "wrn", "depth": 34, "widen_factor": 10}, 46.16, 0.05),
    ],
)
def test_full_size_parameter_counts(section: dict[str, Any], millions: float, tol: float) -> None:
    with torch.device("meta"):  # shapes only: no memory, no init cost, no forward pass
        model = build_model(section, spec(classes=10))
    assert abs(n_params(model) / 1e6 - millions) <= tol


def test_wrn_default_is_34_10() -> None:
    assert MODELS.get("wrn").defaults() == {
        "depth": 34,
        "widen_factor": 10,
        "width": 16,
        "dropout": 0.0,
        "norm": "batch",
        "sync_bn": False,
    }


@pytest.mark.parametrize("name", ["small_cnn", "preact_resnet18", "resnet18", "wrn"])
def test_group_norm_replaces_every_batchnorm_and_keeps_the_other_initial_weights(name):
    section = {"name": name, "width": 4} if name != "wrn" else {"name": name, "depth": 10, "width": 4}
    torch.manual_seed(0)
    batch = build_model(section, spec(classes=10))
    torch.manual_seed(0)
    group = build_model({**section, "norm": "group"}, spec(classes=10))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in group.modules())
    assert any(isinstance(m, torch.nn.GroupNorm) for m in group.modules())
    convs = [k for k, v in batch.state_dict().items() if v.ndim == 4]
    assert all(torch.equal(batch.state_dict()[k], group.state_dict()[k]) for k in convs)
    # per-sample statistics: a sample's output does not depend on the rest of its batch
    x = torch.rand(6, 3, 32, 32)
    group.train()
    assert torch.allclose(group(x)[:2], group(x[:2]), atol=1e-5)


@pytest.mark.parametrize("depth", [4, 12, 33])
def test_wrn_bad_depth(depth: int) -> None:
    with pytest.raises(ConfigError) as err:
        build_model({"name": "wrn", "depth": depth}, spec())
    assert err.value.field == "model.depth"
    assert "34" in err.value.message


def test_unknown_model_name() -> None:
    with pytest.raises(ConfigError) as err:
        build_model({"name": "vgg16"}, spec())
    assert err.value.field == "model.name"
    assert all(n in err.value.message for n in NAMES)


def test_unknown_field() -> None:
    with pytest.raises(ConfigError) as err:
        build_model({"name": "wrn", "colour": 3}, spec())
    assert err.value.field == "model.colour"
    assert "depth" in err.value.message and "widen_factor" in err.value.message


def test_bad_width() -> None:
    with pytest.raises(ConfigError) as err:
        build_model({"name": "resnet18", "width": 0}, spec())
    assert err.value.field == "model.width"


def test_small_cnn_learns_digits() -> None:
    datasets = pytest.importorskip("sklearn.datasets")
    X, y = datasets.load_digits(return_X_y=True)
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(y), generator=g)
    x = torch.tensor(X / 16.0, dtype=torch.float32).view(-1, 1, 8, 8)[perm]
    y = torch.tensor(y)[perm]
    torch.manual_seed(0)
    digits = DataSpec("digits", 10, 1, (8, 8), (0.3,), (0.4,))
    model = build_model({"name": "small_cnn", "width": 16}, digits)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(3):
        model.train()
        for i in range(0, 1400, 64):
            loss = F.cross_entropy(model(x[i : i + 64]), y[i : i + 64])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        acc = (model(x[1400:]).argmax(1) == y[1400:]).float().mean().item()
    assert acc > 0.9
