"""Typed run configuration, YAML presets and ``key=value`` overrides.

A preset is a YAML file in ``adaptrain/presets/`` (or any path) with a one-line
``description`` and optionally ``base: <other preset>`` whose values it overrides. Sections
``model``, ``strategy``, ``attack``, ``objective`` and ``regularizer`` are checked against the
registered component's keyword parameters; the other sections are the dataclasses below. Changing a
component's ``name`` (in a preset or on the command line) starts its section afresh, so
fields of the previous component do not leak into the new one.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError
from .registry import coerce
from .schedules import SCHEDULES

COMPONENT_SECTIONS = ("model", "strategy", "attack", "objective", "regularizer")
INIT_REQUIRED = "required"  # init_from placeholder of fine-tuning presets: training refuses it


@dataclass
class DataConfig:
    name: str = "cifar10"
    root: str | None = None  # data directory (default: $ADAPTRAIN_DATA or ~/.cache/adaptrain/data)
    subset: int | None = None  # use only this many training images
    val_size: int = 1000  # held out from the training split for model selection (0: use test)
    batch_size: int = 128
    eval_batch_size: int = 256
    split_seed: int = 0  # fixes the validation split and subset, independent of ``seed``
    augment: str = "auto"  # auto | none | flip | crop_flip (auto: crop_flip from 32 px up)
    download: bool = True


@dataclass
class OptimConfig:
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    schedule: str = "piecewise"  # constant | multistep | piecewise | cosine | onecycle
    milestones: list[float] = field(default_factory=list)  # epochs, for multistep
    gamma: float = 0.1  # multistep decay factor
    peak_at: float = 0.4  # onecycle: fraction of training at which lr peaks


@dataclass
class AWPConfig:
    gamma: float = 0.0  # relative weight-perturbation size; > 0 switches AWP on
    warmup: int = 0  # epochs without AWP at the start
    proxy_lr: float = 0.01  # step of the proxy's gradient ascent


@dataclass
class EvalConfig:
    n: int = 1000  # validation examples evaluated after each epoch
    attack: str = "pgd-10"  # clean, pgd-K, pgd-K-R, cw-K, fgsm, apgd-ce, ... (adaptrain.evaluate.specs)
    eps: float = 8 / 255
    step_size: float = 2 / 255
    every: int = 1  # evaluate every this many epochs (and always after the last)
    select: str = "robust"  # best checkpoint by: robust | clean
    fgsm: str = "auto"  # also FGSM accuracy (catastrophic-overfitting check): auto | on | off


@dataclass
class Config:
    description: str = ""
    seed: int = 0
    epochs: int = 200
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: str = "auto"  # auto (bf16 forward passes on CUDA) | bf16 | off
    channels_last: str = "auto"  # auto (on CUDA) | on | off
    deterministic: bool = False  # torch.use_deterministic_algorithms (slower on CUDA)
    compile: bool = False  # torch.compile the training step's forward passes (GPUs; slow to compile on CPU)
    init_from: str | None = None  # run dir or checkpoint to load weights from (fresh optimiser);
    # a preset that only makes sense from a trained model writes INIT_REQUIRED ("required")
    data: DataConfig = field(default_factory=DataConfig)
    model: dict[str, Any] = field(default_factory=lambda: {"name": "preact_resnet18"})
    optim: OptimConfig = field(default_factory=OptimConfig)
    strategy: dict[str, Any] = field(default_factory=lambda: {"name": "fixed"})
    attack: dict[str, Any] = field(default_factory=lambda: {"name": "pgd"})
    objective: dict[str, Any] = field(default_factory=lambda: {"name": "pgd_at"})
    regularizer: dict[str, Any] = field(default_factory=lambda: {"name": "none"})
    awp: AWPConfig = field(default_factory=AWPConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def dump(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# ---------------------------------------------------------------------------------------
# presets


def presets_dir() -> Path:
    return Path(str(resources.files("adaptrain") / "presets"))


def preset_names() -> list[str]:
    return sorted(p.stem for p in presets_dir().glob("*.yaml"))


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(str(path), f"invalid YAML: {str(exc).splitlines()[0]}") from None
    except OSError as exc:
        raise ConfigError(str(path), f"cannot read: {exc.strerror}") from None
    if not isinstance(data, dict):
        raise ConfigError(str(path), "a config file must be a YAML mapping")
    return data


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        old = out.get(key)
        if isinstance(value, dict) and isinstance(old, dict):
            if key in COMPONENT_SECTIONS and "name" in value and value["name"] != old.get("name"):
                out[key] = dict(value)  # a different component: start afresh
            else:
                out[key] = _merge(old, value)
        else:
            out[key] = value
    return out


def load_preset(name_or_path: str, _seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """Raw dict of a preset (by name) or YAML file (by path), with ``base`` resolved."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ConfigError("preset", f"no such file {name_or_path!r}")
    else:
        path = presets_dir() / f"{name_or_path}.yaml"
        if not path.is_file():
            raise ConfigError("preset", f"unknown {name_or_path!r}; allowed: "
                              f"{', '.join(preset_names())} or a path to a YAML file")
    if str(path) in _seen:
        raise ConfigError("base", f"preset inheritance loops through {path.name}")
    data = _read_yaml(path)
    base = data.pop("base", None)
    if base is not None:
        local = path.parent / f"{base}.yaml"
        parent = load_preset(str(local) if local.is_file() else str(base), (*_seen, str(path)))
        data = _merge(parent, data)
    return data


# ---------------------------------------------------------------------------------------
# overrides and typed construction


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["a.b=1", "c=8/255"]`` -> nested dict; values are parsed as YAML scalars/lists."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(item, "overrides are written key=value (e.g. epochs=2 model.width=16)")
        key, _, raw = item.partition("=")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(key, "conflicting overrides")
        node[parts[-1]] = value
    return out


def _typed(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(where, f"expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            raise ConfigError(f"{where}.{key}" if where else key,
                              f"unknown field; allowed: {', '.join(names)}")
        sub = f"{where}.{key}" if where else key
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = _typed(hint, value, sub)
        elif key in COMPONENT_SECTIONS and not where:
            if not isinstance(value, dict):
                raise ConfigError(sub, f"expected a mapping with a 'name', got {value!r}")
            kwargs[key] = dict(value)
        else:
            kwargs[key] = coerce(value, hint, sub)
    return cls(**kwargs)


def build_config(preset: str, overrides: list[str] | None = None) -> Config:
    """Preset (name or YAML path) + command-line overrides -> validated Config."""
    raw = load_preset(preset)
    over = parse_overrides(overrides or [])
    return config_from_dict(_merge(raw, over))


def config_from_dict(raw: dict[str, Any]) -> Config:
    raw = dict(raw)
    raw.pop("base", None)
    cfg = _typed(Config, raw, "")
    validate(cfg)
    return cfg


def load_config_file(path: Path) -> Config:
    return config_from_dict(_read_yaml(path))


def _check(ok: bool, field_name: str, message: str) -> None:
    if not ok:
        raise ConfigError(field_name, message)


def validate(cfg: Config) -> None:
    """Range checks and registry lookups; raises ConfigError naming the first bad field."""
    from .attacks import ATTACKS
    from .data import DATASETS
    from .evaluate.specs import parse_spec
    from .models import MODELS
    from .objectives import OBJECTIVES
    from .regularizers import REGULARIZERS
    from .strategies import STRATEGIES

    _check(cfg.epochs >= 1, "epochs", f"must be >= 1, got {cfg.epochs}")
    _check(cfg.amp in ("auto", "bf16", "off"), "amp", f"{cfg.amp!r}; allowed: auto, bf16, off")
    _check(cfg.channels_last in ("auto", "on", "off"), "channels_last",
           f"{cfg.channels_last!r}; allowed: auto, on, off")
    _check(cfg.device == "auto" or cfg.device == "cpu" or cfg.device.startswith("cuda"),
           "device", f"{cfg.device!r}; allowed: auto, cpu, cuda, cuda:N")
    d = cfg.data
    DATASETS.get(d.name)
    _check(d.batch_size >= 1, "data.batch_size", f"must be >= 1, got {d.batch_size}")
    _check(d.eval_batch_size >= 1, "data.eval_batch_size", f"must be >= 1, got {d.eval_batch_size}")
    _check(d.subset is None or d.subset >= 1, "data.subset", f"must be >= 1, got {d.subset}")
    _check(d.val_size >= 0, "data.val_size", f"must be >= 0, got {d.val_size}")
    _check(d.augment in ("auto", "none", "flip", "crop_flip"), "data.augment",
           f"{d.augment!r}; allowed: auto, none, flip, crop_flip")
    o = cfg.optim
    _check(o.lr > 0, "optim.lr", f"must be > 0, got {o.lr}")
    _check(o.momentum >= 0, "optim.momentum", f"must be >= 0, got {o.momentum}")
    _check(o.weight_decay >= 0, "optim.weight_decay", f"must be >= 0, got {o.weight_decay}")
    _check(o.schedule in SCHEDULES, "optim.schedule",
           f"unknown {o.schedule!r}; allowed: {', '.join(SCHEDULES)}")
    _check(o.schedule != "multistep" or bool(o.milestones), "optim.milestones",
           "multistep needs milestones (epochs), e.g. optim.milestones=[100,150]")
    _check(0 < o.peak_at < 1, "optim.peak_at", f"must be in (0, 1), got {o.peak_at}")
    a = cfg.awp
    _check(a.gamma >= 0, "awp.gamma", f"must be >= 0, got {a.gamma}")
    _check(a.warmup >= 0, "awp.warmup", f"must be >= 0, got {a.warmup}")
    _check(a.proxy_lr > 0, "awp.proxy_lr", f"must be > 0, got {a.proxy_lr}")
    e = cfg.eval
    _check(e.n >= 1, "eval.n", f"must be >= 1, got {e.n}")
    _check(e.eps >= 0, "eval.eps", f"must be >= 0, got {e.eps}")
    _check(e.every >= 1, "eval.every", f"must be >= 1, got {e.every}")
    _check(e.select in ("robust", "clean"), "eval.select", f"{e.select!r}; allowed: robust, clean")
    _check(e.fgsm in ("auto", "on", "off"), "eval.fgsm", f"{e.fgsm!r}; allowed: auto, on, off")
    parse_spec(e.attack, "eval.attack")
    for section, registry in (("model", MODELS), ("strategy", STRATEGIES), ("attack", ATTACKS),
                              ("objective", OBJECTIVES), ("regularizer", REGULARIZERS)):
        body = dict(getattr(cfg, section))
        name = body.pop("name", None)
        if name is None:
            raise ConfigError(f"{section}.name", f"missing; allowed: {', '.join(registry.names())}")
        entry = registry.get(name)
        checked = entry.check(body, section)
        # the resolved config records every field, defaults included
        setattr(cfg, section, {"name": name, **entry.defaults(), **checked})
