"""``adaptrain export`` round trips and ``adaptrain.load_run``: the exported file, loaded as its
consumer would (the architecture, ``torch.jit.load``, onnxruntime), gives the run's logits on
[0, 1] images (exactly for a state dict, to 1e-5 for TorchScript and ONNX)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

import adaptrain
from adaptrain import checkpoint
from adaptrain.cli import main
from adaptrain.config import build_config, load_config_file
from adaptrain.data import load_arrays
from adaptrain.models import build_model
from adaptrain.train import train
from training_helpers import QUIET


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "run"
    train(build_config("quickstart-clean", ["epochs=2"]), out, **QUIET)
    return out


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    """[0, 1] test images, a batch size the exporters never saw (they trace with 2)."""
    return load_arrays("digits", None).x_test[:50].float() / 255


def export(capsys, run: Path, fmt: str, out: Path, *extra: str) -> tuple[int, str, str]:
    code = main(["export", str(run), "--format", fmt, "--out", str(out), *extra])
    captured = capsys.readouterr()
    return code, captured.out, captured.err.strip()


def test_load_run_gives_the_trained_model_in_eval_mode_on_the_cpu(run, images):
    model, cfg = adaptrain.load_run(run)
    assert not model.training and next(model.parameters()).device.type == "cpu"
    assert cfg.model["name"] == "small_cnn" and cfg.data.name == "digits"
    weights = checkpoint.load_weights(run / "checkpoints" / "best")
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())
    last, _ = adaptrain.load_run(run, checkpoint="last")
    assert torch.equal(last(images), checkpoint_model(run, "last")(images))
    # normalisation inside: [0, 1] in, the model's own mean / std applied
    assert torch.allclose(model(images), model.head(model.embed((images - model.mean) / model.std)))


def checkpoint_model(run: Path, which: str) -> torch.nn.Module:
    cfg = load_config_file(run / "config.yaml")
    model = build_model(cfg.model, load_arrays("digits", None).spec)
    checkpoint.load_into(model, run / "checkpoints" / which)
    return model.eval()


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"checkpoint": "worst"}, "checkpoint"),
    ({"device": "cuda:7"}, "device"),
])
def test_load_run_refuses_with_one_line(run, kwargs, field):
    from adaptrain.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        adaptrain.load_run(run, **kwargs)
    assert info.value.field == field and "\n" not in str(info.value)


def test_load_run_of_a_folder_that_is_not_a_run(tmp_path):
    from adaptrain.errors import ConfigError

    with pytest.raises(ConfigError, match="not a run directory"):
        adaptrain.load_run(tmp_path)


@pytest.mark.parametrize("name", ["model.safetensors", "model.pt"])
def test_state_dict_export_loads_into_the_architecture_exactly(capsys, run, images, tmp_path, name):
    out = tmp_path / name
    code, stdout, err = export(capsys, run, "state_dict", out)
    assert code == 0, err
    assert "max |delta logit|" in stdout and stdout.strip().endswith(": 0")
    model, cfg = adaptrain.load_run(run)
    fresh = build_model(cfg.model, load_arrays("digits", None).spec)
    weights = (torch.load(out, weights_only=True) if out.suffix == ".pt"
               else checkpoint.load_weights(out))
    fresh.load_state_dict(weights)
    with torch.no_grad():
        assert torch.equal(fresh.eval()(images), model(images))


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
def test_torchscript_export_runs_without_adaptrain_to_1e5(capsys, run, images, tmp_path):
    out = tmp_path / "model.pt"
    code, _, err = export(capsys, run, "torchscript", out)
    assert code == 0, err
    scripted = torch.jit.load(str(out))
    model, _ = adaptrain.load_run(run)
    with torch.no_grad():
        diff = (scripted(images) - model(images)).abs().max().item()
    assert diff <= 1e-5


def test_onnx_export_matches_in_onnxruntime_to_1e5(capsys, run, images, tmp_path):
    for needed in ("onnx", "onnxscript", "onnxruntime"):
        if importlib.util.find_spec(needed) is None:
            pytest.skip(f"{needed} is not installed (pip install -e '.[dev]')")
    import onnxruntime

    out = tmp_path / "model.onnx"
    code, stdout, err = export(capsys, run, "onnx", out, "--checkpoint", "last")
    assert code == 0, err
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (logits,) = session.run(["logits"], {"images": images.numpy()})
    model, _ = adaptrain.load_run(run, checkpoint="last")
    with torch.no_grad():
        diff = (torch.from_numpy(logits) - model(images)).abs().max().item()
    assert diff <= 1e-5


@pytest.mark.parametrize(("argv", "flag"), [
    (("--format", "keras", "--out", "m.h5"), "--format"),
    (("--format", "onnx", "--out", "m.pt"), "--out"),
    (("--format", "state_dict", "--out", "m.onnx"), "--out"),
    (("--format", "torchscript", "--out", "m.pt", "--checkpoint", "median"), "--checkpoint"),
    (("--format", "torchscript"), "--out"),
    (("--out", "m.pt"), "adaptrain export"),
])
def test_export_mistakes_are_one_line_naming_the_option(capsys, run, tmp_path, monkeypatch, argv, flag):
    monkeypatch.chdir(tmp_path)
    code = main(["export", str(run), *argv])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith(f"error: {flag}:") and len(err.splitlines()) == 1, err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
def test_export_of_a_folder_that_is_not_a_run(capsys, tmp_path):
    code, _, err = export(capsys, tmp_path, "torchscript", tmp_path / "m.pt")
    assert code == 2 and err.startswith("error: adaptrain export:") and "not a run directory" in err
    assert not (tmp_path / "m.pt").exists()


def test_export_keeps_an_existing_file_unless_forced(capsys, run, tmp_path):
    out = tmp_path / "model.pt"
    out.write_text("someone's file")
    code, _, err = export(capsys, run, "torchscript", out)
    assert code == 2 and err.startswith("error: --out:") and "--force" in err
    assert out.read_text() == "someone's file"
    code, _, err = export(capsys, run, "torchscript", out, "--force")
    assert code == 0, err
    assert torch.jit.load(str(out)) is not None
