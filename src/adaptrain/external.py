"""Models from outside adaptrain: a builder named by import path, or RobustBench's model zoo.

Contract (RobustBench's, and every adaptrain model's): the model takes images in [0, 1] of
shape (B, C, H, W) and returns logits (B, num_classes); any normalisation happens inside it.
``pkg.module:builder`` is imported (the current directory first, as ``python -m`` would) and
called with the ``--model-kwargs`` JSON object as keyword arguments; its weights come from a
safetensors file or a torch state dict read with ``weights_only=True`` (a pickle that would
build Python objects is refused). ``robustbench:NAME`` builds the architecture from the
installed ``robustbench`` package's model zoo and reads ``<model_dir>/<data>/<Linf|L2>/NAME.pt``
the same safe way: nothing is ever downloaded.

:func:`check_contract` probes the contract on real images before any attack runs: logits of
the right shape, not probabilities, and [0, 1] inputs (a model that classifies data-normalised
or 0..255 inputs far better than [0, 1] images expects them). Every error is one line naming
the option to change (``--model``, ``--model-kwargs``, ``--weights``, ``--model-dir``).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import checkpoint
from .config import Config, DataConfig, EvalConfig
from .data.base import DataSpec
from .errors import CheckpointError, ConfigError

ROBUSTBENCH = "robustbench:"
_BUILDER = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")

# The budget a data set is attacked with when neither the run nor --eps says: the field's
# standard threat models (RobustBench's for CIFAR; Madry et al.'s 0.3 for MNIST; this
# project's quickstart for the 8x8 digits), in [0, 1] image units. Keyed by data set, norm.
DEFAULT_EPS: dict[str, dict[str, float]] = {
    "cifar10": {"linf": 8 / 255, "l2": 0.5},
    "cifar100": {"linf": 8 / 255, "l2": 0.5},
    "svhn": {"linf": 8 / 255},
    "mnist": {"linf": 0.3},
    "digits": {"linf": 0.1},
}
ROBUSTBENCH_THREATS = {"linf": "Linf", "l2": "L2"}
PROBE = 256  # examples the contract probe classifies (one forward pass each way)
PROBE_MARGIN = 0.25  # accuracy another input scaling must win by to call the contract broken


@dataclass(frozen=True)
class External:
    """A loaded external model and what provenance records about it."""

    model: nn.Module
    spec: str  # the --model value
    weights: Path | None  # the file read (None: the builder's own initial weights)
    sha256: str | None  # of that file


def default_eps(data: str, norm: str) -> float:
    """The data set's standard budget for ``norm``; ConfigError(--eps) when it has none."""
    table = DEFAULT_EPS.get(data, {})
    if norm not in table:
        known = ", ".join(f"{d} {n}" for d, t in DEFAULT_EPS.items() for n in t)
        raise ConfigError("--eps", f"no default {norm} budget for data set {data!r} (defaults "
                          f"exist for {known}); pass --eps, e.g. --eps 8/255")
    return table[norm]


def config_for(data: str, root: str | None, norm: str, eps: float) -> Config:
    """The config an external model is evaluated under, as a run's would be: the data set
    (its test split; no held-out split), the threat model, and a step of eps/4 (2/255 at
    8/255, a run's default) unless --step-size says otherwise; no strategy, so no eps-curve."""
    cfg = Config()
    cfg.data = DataConfig(name=data, root=root, val_size=0)
    cfg.attack = {"name": "pgd", "norm": norm}
    cfg.strategy = {"name": "none"}
    # a relative step, as --step-size accepts it: it follows --eps when that is given
    cfg.eval = EvalConfig(eps=eps, step_size="eps/4")  # type: ignore[arg-type]
    return cfg


def parse_kwargs(text: str | None) -> dict[str, Any]:
    """--model-kwargs: a JSON object (keyword arguments of the builder)."""
    if text is None or not text.strip():
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError("--model-kwargs", f"not valid JSON ({exc.msg} at character "
                          f"{exc.pos}); write e.g. '{{\"width\": 16}}'") from None
    if not isinstance(value, dict):
        raise ConfigError("--model-kwargs", f"must be a JSON object of keyword arguments, got {text!r}")
    return value


def check_spec(spec: str) -> None:
    """Refuse a malformed --model before anything is imported."""
    if spec.startswith(ROBUSTBENCH):
        if not re.fullmatch(r"[\w.\-]+", spec[len(ROBUSTBENCH):]):
            raise ConfigError("--model", f"{spec!r}: write robustbench:NAME, e.g. "
                              "robustbench:Carmon2019Unlabeled")
    elif not _BUILDER.match(spec):
        raise ConfigError("--model", f"{spec!r} is not pkg.module:builder (an importable module, a "
                          "colon, a callable returning the model) or robustbench:NAME")


def import_builder(spec: str) -> Any:
    """``pkg.module:attr.path`` -> the object; the current directory is searched first."""
    check_spec(spec)
    module_name, attr = spec.split(":", 1)
    if os.getcwd() not in sys.path:  # the console script does not put it there; python -m does
        sys.path.insert(0, os.getcwd())
    try:
        obj: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise ConfigError("--model", f"cannot import {module_name!r} ({exc}); it must be importable "
                          "from the current directory or PYTHONPATH") from None
    except Exception as exc:  # the user's module failed while importing: say so on one line
        raise ConfigError("--model", f"importing {module_name!r} failed: {type(exc).__name__}: "
                          f"{_first_line(exc)}") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError("--model", f"{module_name!r} has no {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError("--model", f"{spec} is not callable; name a function or class that "
                          "returns the model")
    return obj


def build(spec: str, kwargs: dict[str, Any]) -> nn.Module:
    """Call the builder named by ``spec`` with ``kwargs``; the result must be an nn.Module."""
    builder = import_builder(spec)
    try:
        model = builder(**kwargs)
    except TypeError as exc:
        raise ConfigError("--model-kwargs", f"{spec}(**{kwargs}) failed: {_first_line(exc)}") from None
    except Exception as exc:
        raise ConfigError("--model", f"{spec}(**{kwargs}) failed: {type(exc).__name__}: "
                          f"{_first_line(exc)}") from None
    if not isinstance(model, nn.Module):
        raise ConfigError("--model", f"{spec} returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def load_weights(model: nn.Module, path: Path, what: str, flag: str = "--weights") -> None:
    """Load a safetensors file or a plain torch state dict into ``model``; keys saved from a
    wrapped model (``module.``, ``model.`` prefixes) are matched to the model's own. A pickle
    payload, an unreadable file or weights of another architecture: ConfigError(flag)."""
    try:
        weights = checkpoint.load_weights(path)
    except CheckpointError as exc:
        raise ConfigError(flag, exc.message) from None
    _load_dict(model, weights, path, what, flag)


def _load_dict(model: nn.Module, weights: dict[str, torch.Tensor], path: Path, what: str,
               flag: str, extra_ok: bool = False) -> None:
    """Every key of the model, with its shape, from ``weights``; keys the model does not have
    are refused unless ``extra_ok`` (RobustBench files may carry e.g. unused mu / sigma)."""
    own = model.state_dict()
    weights = _fit_keys(weights, set(own))
    missing = [k for k in own if k not in weights]
    unexpected = [] if extra_ok else [k for k in weights if k not in own]
    bad = [f"{k} {tuple(weights[k].shape)} vs {tuple(own[k].shape)}" for k in own
           if k in weights and weights[k].shape != own[k].shape]
    if missing or unexpected or bad:
        why = (f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}" if unexpected
               else f"shape mismatch at {bad[:2]} (file vs model)")
        raise ConfigError(flag, f"{path} does not fit {what} ({why}); check --model and --model-kwargs")
    model.load_state_dict({k: weights[k] for k in own}, strict=True)


def _fit_keys(weights: dict[str, torch.Tensor], own: set[str]) -> dict[str, torch.Tensor]:
    """The variant of the keys (as saved; ``module.`` / ``model.`` prefixes stripped or
    ``model.`` added) that matches most of the model's keys."""
    def strip(d: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
        return {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in d.items()}

    plain = strip(weights, "module.")
    candidates = [weights, plain, strip(plain, "model."), {"model." + k: v for k, v in plain.items()}]
    return max(candidates, key=lambda d: len(own & d.keys()))


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load(spec: str, kwargs: dict[str, Any], weights: Path | None, *, data: str, norm: str,
         model_dir: Path) -> External:
    """The model ``spec`` names, weights loaded, in eval mode (on the CPU)."""
    check_spec(spec)
    if spec.startswith(ROBUSTBENCH):
        if kwargs:
            raise ConfigError("--model-kwargs", "RobustBench models take no keyword arguments")
        model, weights = _robustbench(spec[len(ROBUSTBENCH):], data, norm, model_dir, weights)
    else:
        model = build(spec, kwargs)
        if weights is None:
            raise ConfigError("--weights", f"give the weights of {spec} (a .safetensors file or a "
                              "torch state dict); adaptrain does not evaluate untrained models")
        _require_file(weights, "--weights")
        load_weights(model, weights, spec)
    model.eval()
    return External(model, spec, weights, sha256(weights) if weights is not None else None)


def _require_file(path: Path, flag: str) -> None:
    if not path.is_file():
        raise ConfigError(flag, f"{path} does not exist" if not path.exists() else f"{path} is not a file")


def _robustbench(name: str, data: str, norm: str, model_dir: Path, weights: Path | None
                 ) -> tuple[nn.Module, Path]:
    """RobustBench's architecture for (data, threat, name) with the weights at its layout's
    path (or ``weights``), read safely; ensembles and timm-hosted models are not supported."""
    try:
        from robustbench.model_zoo import model_dicts
        from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel
    except ImportError as exc:
        raise ConfigError("--model", f"robustbench:{name} needs the robustbench package ({exc}); "
                          "install it as its repository says, with AutoAttack (docs/evaluation.md)") from None
    if norm not in ROBUSTBENCH_THREATS:
        raise ConfigError("--norm", f"RobustBench threat models are {', '.join(ROBUSTBENCH_THREATS)}")
    threat = ROBUSTBENCH_THREATS[norm]
    try:
        zoo = model_dicts[BenchmarkDataset(data)][ThreatModel(threat)]
    except (ValueError, KeyError):
        have = ", ".join(d.value for d in BenchmarkDataset)
        raise ConfigError("--data", f"RobustBench has no {threat} models for {data!r} (its data sets: "
                          f"{have})") from None
    if name not in zoo:
        raise ConfigError("--model", f"RobustBench has no {data} {threat} model {name!r}")
    entry = zoo[name]
    if not callable(entry.get("model")) or isinstance(entry.get("gdrive_id"), (list, tuple)):
        raise ConfigError("--model", f"robustbench:{name} is an ensemble or a timm-hosted model; "
                          "only single-file models are supported")
    path = weights if weights is not None else Path(model_dir) / data / threat / f"{name}.pt"
    _require_file(path, "--weights" if weights is not None else "--model-dir")
    model = entry["model"]()
    try:
        raw = checkpoint.safe_torch_load(path)  # weights_only: a pickle payload is refused
    except CheckpointError as exc:
        raise ConfigError("--weights" if weights is not None else "--model-dir", exc.message) from None
    if isinstance(raw, dict) and isinstance(raw.get("last"), dict):
        raw = raw["last"]  # some authors saved {'last': ..., 'best': ...}; RobustBench takes 'last'
    flag = "--weights" if weights is not None else "--model-dir"
    _load_dict(model, _as_state_dict(raw, path, flag), path, f"robustbench:{name}", flag, extra_ok=True)
    return model, path


def _as_state_dict(raw: Any, path: Path, flag: str) -> dict[str, torch.Tensor]:
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(raw, dict) and isinstance(raw.get(key), dict):
            raw = raw[key]
            break
    if not isinstance(raw, dict):
        raise ConfigError(flag, f"{path} holds no state dict")
    return {k: v for k, v in raw.items() if isinstance(v, torch.Tensor)}


def check_contract(model: nn.Module, x: torch.Tensor, y: torch.Tensor, spec: DataSpec,
                   device: torch.device) -> None:
    """Probe the [0, 1]-in, logits-out contract on the first :data:`PROBE` images ``x``
    (uint8 (N, C, H, W)): ConfigError(--model) when the outputs are not (B, num_classes)
    logits, or when data-normalised or 0..255 inputs are classified at least
    :data:`PROBE_MARGIN` more accurately than [0, 1] images (the model expects those)."""
    from .evaluate.guards import EvaluationError, check_logits

    xb = x[:PROBE].to(device)
    xb = xb.float().div(255) if xb.dtype == torch.uint8 else xb.float()
    yb = y[:PROBE].to(device)
    mean = torch.tensor(spec.mean, device=device).view(1, -1, 1, 1)
    std = torch.tensor(spec.std, device=device).view(1, -1, 1, 1)
    accuracy = {}
    with torch.no_grad():
        for name, inputs in (("[0, 1]", xb), ("data-normalised", (xb - mean) / std),
                             ("0..255", xb * 255)):
            try:
                out = model(inputs)
            except Exception as exc:
                if name != "[0, 1]":
                    continue  # only the contract's own inputs must work
                raise ConfigError("--model", f"fails on [0, 1] images of shape {tuple(xb.shape)}: "
                                  f"{type(exc).__name__}: {_first_line(exc)}") from None
            if name == "[0, 1]":
                _check_output(out, xb.shape[0], spec.num_classes)
                try:
                    check_logits(out)
                except EvaluationError as exc:
                    raise ConfigError("--model", exc.message) from None
            if isinstance(out, torch.Tensor) and out.shape == (xb.shape[0], spec.num_classes):
                accuracy[name] = float((out.argmax(1) == yb).float().mean())
    best = max(accuracy, key=lambda k: accuracy[k])
    if best != "[0, 1]" and accuracy[best] >= accuracy["[0, 1]"] + PROBE_MARGIN:
        raise ConfigError("--model", f"it classifies {best} inputs far better than [0, 1] images "
                          f"({accuracy[best]:.0%} vs {accuracy['[0, 1]']:.0%} of {xb.shape[0]} test "
                          "images): it must take [0, 1] images and normalise inside (RobustBench's "
                          "contract); wrap it in a module that normalises first")


def _check_output(out: Any, batch: int, classes: int) -> None:
    if not isinstance(out, torch.Tensor):
        raise ConfigError("--model", f"returns a {type(out).__name__}; it must return a tensor of "
                          f"logits (B, {classes})")
    if tuple(out.shape) != (batch, classes):
        raise ConfigError("--model", f"returns shape {tuple(out.shape)} for {batch} images; expected "
                          f"logits ({batch}, {classes}) for this data set's {classes} classes")
    if not out.is_floating_point() or not bool(torch.isfinite(out).all()):
        raise ConfigError("--model", "returns non-finite or non-float outputs on [0, 1] images")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
