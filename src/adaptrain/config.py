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
import re
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import yaml

from .component import (
    MAX_BATCH,
    MAX_EPOCHS,
    MAX_IMAGES,
    MAX_LR,
    MAX_RESTARTS,
    MAX_SEED,
    MAX_STEPS,
    require,
    require_in,
)
from .ema import BUFFER_MODES
from .errors import ConfigError
from .registry import PathOf, coerce
from .schedules import SCHEDULES, first_decay_epoch, make_schedule

if TYPE_CHECKING:
    from .context import RunContext
    from .registry import Entry

COMPONENT_SECTIONS = ("model", "strategy", "attack", "objective", "regularizer")
INIT_REQUIRED = "required"  # init_from placeholder of fine-tuning presets: training refuses it
DataDir = Annotated[str, PathOf("a data directory")]
ExtraPath = Annotated[str, PathOf("an .npz file or a directory of shards")]
RunOrCheckpoint = Annotated[str, PathOf("a run directory or checkpoint")]


@dataclass
class DataConfig:
    name: str = "cifar10"
    root: DataDir | None = None  # data directory (default: $ADAPTRAIN_DATA or ~/.cache/adaptrain/data)
    subset: int | None = None  # use only this many training images
    val_size: int = 1000  # held out from the training split for model selection (0: use test)
    batch_size: int = 128
    eval_batch_size: int = 256
    split_seed: int = 0  # fixes the validation split and subset, independent of ``seed``
    augment: str = "auto"  # auto | none | flip | crop_flip (auto: crop_flip from 32 px up)
    download: bool = True
    # generated images mixed into every batch: an .npz (image uint8 (N,H,W,C), label (N,)) or a
    # directory of shards, memory-mapped (docs/extra-data.md); checked before training starts
    extra: ExtraPath | None = None
    extra_fraction: float = 0.7  # share of each batch drawn from data.extra (when given)


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
class EMAConfig:
    decay: float = 0.0  # exponential moving average of the weights; > 0 switches it on (0.995 typical)
    warmup: int = 0  # epochs during which the average copies the weights (then the decay ramps up)
    buffers: str = "copy"  # BatchNorm statistics of the average: copy (the model's) | average


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
class LogConfig:
    # live copies of metrics.csv / strategy.csv (which stay the record), see adaptrain.logmetrics
    tensorboard: bool = False  # scalars + eps histograms under RUN/tensorboard/ (extra [tensorboard])
    wandb: bool = False  # Weights & Biases ($WANDB_PROJECT, default adaptrain); needs wandb installed


@dataclass
class Config:
    description: str = ""
    seed: int = 0
    epochs: int = 200
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: str = "auto"  # auto (bf16 training forwards where bf16 is native) | bf16 | off
    channels_last: str = "auto"  # auto (with native bf16) | on | off
    deterministic: bool = False  # torch.use_deterministic_algorithms (slower on CUDA)
    # CPU threads per process: auto = the CPUs this process may use (affinity, cgroup quota)
    # divided by the processes sharing them (torchrun's local ranks); OMP_NUM_THREADS wins
    threads: int | str = "auto"
    compile: bool = False  # torch.compile the training step's forward passes (GPUs; slow to compile on CPU)
    init_from: RunOrCheckpoint | None = None  # run dir or checkpoint to load weights from (fresh optimiser);
    # a preset that only makes sense from a trained model writes INIT_REQUIRED ("required")
    data: DataConfig = field(default_factory=DataConfig)
    model: dict[str, Any] = field(default_factory=lambda: {"name": "preact_resnet18"})
    optim: OptimConfig = field(default_factory=OptimConfig)
    strategy: dict[str, Any] = field(default_factory=lambda: {"name": "fixed"})
    attack: dict[str, Any] = field(default_factory=lambda: {"name": "pgd"})
    objective: dict[str, Any] = field(default_factory=lambda: {"name": "pgd_at"})
    regularizer: dict[str, Any] = field(default_factory=lambda: {"name": "none"})
    awp: AWPConfig = field(default_factory=AWPConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    log: LogConfig = field(default_factory=LogConfig)

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


# libyaml's safe loader when present: the same YAML, ten times faster (every preset load
# parses its base chain; the config fuzz test builds thousands of configs)
_SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.load(path.read_text(), Loader=_SafeLoader)
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
    hints = typing.get_type_hints(cls, include_extras=True)
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


DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


def validate(cfg: Config) -> None:
    """Every check that needs no data: types were converted by ``_typed``; here the ranges of
    the run's own fields, then each component section (unknown keys, types, and the component's
    own range checks run against a stub context), so a bad field is reported before any data
    set is loaded or directory created. Raises ConfigError naming the first bad field."""
    _validate_run(cfg)
    _validate_data(cfg)
    _validate_optim(cfg)
    _validate_awp_and_eval(cfg)
    _validate_log(cfg)
    _validate_ema(cfg)
    _validate_components(cfg)


def _validate_run(cfg: Config) -> None:
    require_in(cfg.epochs, "epochs", 1, MAX_EPOCHS)
    require_in(cfg.seed, "seed", 0, MAX_SEED, why="seeds of 64-bit generators derive from it")
    require(cfg.amp in ("auto", "bf16", "off"), "amp", f"{cfg.amp!r}; allowed: auto, bf16, off")
    require(cfg.channels_last in ("auto", "on", "off"), "channels_last",
            f"{cfg.channels_last!r}; allowed: auto, on, off")
    require(DEVICE.fullmatch(cfg.device) is not None, "device",
            f"{cfg.device!r}; allowed: auto, cpu, cuda, cuda:N")
    require(cfg.threads == "auto" or (isinstance(cfg.threads, int) and 1 <= cfg.threads <= 4096),
            "threads", f"{cfg.threads!r}; allowed: auto or 1 .. 4096")


def _validate_data(cfg: Config) -> None:
    from .data import DATASETS

    d = cfg.data
    DATASETS.get(d.name)
    why = "the data set's own size is checked when it is loaded"
    if d.subset is not None:
        require_in(d.subset, "data.subset", 1, MAX_IMAGES, why=why)
    require_in(d.val_size, "data.val_size", 0, MAX_IMAGES, why=why)
    require_in(d.batch_size, "data.batch_size", 1, MAX_BATCH)
    require_in(d.eval_batch_size, "data.eval_batch_size", 1, MAX_BATCH)
    require_in(d.split_seed, "data.split_seed", 0, MAX_SEED)
    require(d.augment in ("auto", "none", "flip", "crop_flip"), "data.augment",
            f"{d.augment!r}; allowed: auto, none, flip, crop_flip")
    require_in(d.extra_fraction, "data.extra_fraction", 0, 1, low_open=True, high_open=True,
               why="every batch keeps real rows; the published recipes use 0.7")
    if d.extra is not None:  # the files themselves: train.check_init, before any work
        from .data.extra import extra_rows

        e = extra_rows(d.extra_fraction, d.batch_size)
        require(1 <= e < d.batch_size, "data.extra_fraction",
                f"{d.extra_fraction:.6g} of data.batch_size={d.batch_size} is {e} generated rows; "
                "a batch needs at least one generated and one real row")


def _validate_optim(cfg: Config) -> None:
    o = cfg.optim
    require_in(o.lr, "optim.lr", 0, MAX_LR, low_open=True, why="larger rates diverge")
    require_in(o.momentum, "optim.momentum", 0, 1, high_open=True)
    require(not o.nesterov or o.momentum > 0, "optim.nesterov",
            "Nesterov momentum needs optim.momentum > 0")
    require_in(o.weight_decay, "optim.weight_decay", 0, 1, why="typical values are 1e-4 to 5e-4")
    require(o.schedule in SCHEDULES, "optim.schedule",
            f"unknown {o.schedule!r}; allowed: {', '.join(SCHEDULES)}")
    require(o.schedule != "multistep" or bool(o.milestones), "optim.milestones",
            "multistep needs milestones (epochs), e.g. optim.milestones=[100,150]")
    for m in o.milestones:
        require_in(m, "optim.milestones", 0, MAX_EPOCHS)
    require_in(o.gamma, "optim.gamma", 0, 1, low_open=True, why="a decay factor")
    require_in(o.peak_at, "optim.peak_at", 0, 1, low_open=True, high_open=True)


def _validate_awp_and_eval(cfg: Config) -> None:
    from .evaluate.specs import parse_spec

    a = cfg.awp
    require_in(a.gamma, "awp.gamma", 0, 1, why="relative to each weight's norm; 5e-3 is typical")
    require_in(a.warmup, "awp.warmup", 0, MAX_EPOCHS)
    require_in(a.proxy_lr, "awp.proxy_lr", 0, MAX_LR, low_open=True)
    e = cfg.eval
    require_in(e.n, "eval.n", 1, MAX_IMAGES)
    require_in(e.eps, "eval.eps", 0, 1, why="L-inf budgets are in [0, 1] image units")
    require_in(e.step_size, "eval.step_size", 0, 1, low_open=True,
               why="L-inf steps are in [0, 1] image units")
    require_in(e.every, "eval.every", 1, MAX_EPOCHS)
    require(e.select in ("robust", "clean"), "eval.select", f"{e.select!r}; allowed: robust, clean")
    require(e.fgsm in ("auto", "on", "off"), "eval.fgsm", f"{e.fgsm!r}; allowed: auto, on, off")
    spec = parse_spec(e.attack, "eval.attack")
    require_in(spec.steps, "eval.attack", 0, MAX_STEPS, why="attack steps")
    require_in(spec.restarts, "eval.attack", 1, MAX_RESTARTS, why="restarts")


def _validate_log(cfg: Config) -> None:
    from .logmetrics import check_available

    check_available(cfg.log.tensorboard, cfg.log.wandb)


def _validate_ema(cfg: Config) -> None:
    m = cfg.ema
    require_in(m.decay, "ema.decay", 0, 1, high_open=True,
               why="1 would never move the average; 0.995 .. 0.999 is typical, 0 turns EMA off")
    require_in(m.warmup, "ema.warmup", 0, MAX_EPOCHS)
    require(m.buffers in BUFFER_MODES, "ema.buffers",
            f"{m.buffers!r}; allowed: {', '.join(BUFFER_MODES)}")


def _validate_components(cfg: Config) -> None:
    """Each section: a registered name, known fields of the right types (the resolved config
    records every field, defaults included), compatible sections, the component's own checks
    against a stub context, then the strategy's budgets under the attack's norm."""
    from .attacks import ATTACKS
    from .models import MODELS
    from .objectives import OBJECTIVES
    from .regularizers import REGULARIZERS
    from .strategies import STRATEGIES

    registries = {"model": MODELS, "strategy": STRATEGIES, "attack": ATTACKS,
                  "objective": OBJECTIVES, "regularizer": REGULARIZERS}
    entries = {}
    for section, registry in registries.items():
        body = dict(getattr(cfg, section))
        name = body.pop("name", None)
        if name is None:
            raise ConfigError(f"{section}.name", f"missing; allowed: {', '.join(registry.names())}")
        entry = registry.get(name)
        checked = entry.check(body, section)
        setattr(cfg, section, {"name": name, **entry.defaults(), **checked})
        entries[section] = entry
    for section, entry in entries.items():
        for other, needed in entry.requires.items():
            got = getattr(cfg, other)["name"]
            require(got == needed, f"{other}.name",
                    f"{section} {entry.name!r} needs {other}.name={needed}, got {got!r}")
    ctx = stub_context(cfg)
    for section, entry in entries.items():
        fields = {k: v for k, v in getattr(cfg, section).items() if k != "name"}
        # models (validators only, never built here) and attacks take no run context
        entry.probe(fields, **({} if section in ("model", "attack") else {"ctx": ctx}))
    sections = {section: getattr(cfg, section) for section in entries}
    for entry in entries.values():
        if entry.cross_check is not None:
            entry.cross_check(sections)
    _check_budgets(cfg, entries["strategy"])


def attack_norm(attack: dict[str, Any]) -> str:
    """The norm the training attack's budgets are measured in: DRA's per-coordinate budget is
    a mean absolute change, i.e. in L-inf units; its ``total`` budget is an L1 norm."""
    if attack["name"] == "dra":
        return "linf" if attack.get("budget") == "per_coordinate" else "l1"
    return str(attack.get("norm", "linf"))


def _check_budgets(cfg: Config, strategy: Entry) -> None:
    """The strategy's budget fields (eps, step sizes, option lists) times their unit are in
    [0, 1] image units: at most 1 under L-inf. Under L2 / L1 the bound is sqrt(d) / d for
    d = C*H*W, known only with the data, so there they are only finite and >= 0 (the
    constructors check >= 0)."""
    if attack_norm(cfg.attack) != "linf":
        return
    unit = 1.0 if strategy.budget_unit is None else cfg.strategy[strategy.budget_unit]
    if unit <= 0:
        return  # the strategy's own check names its unit field
    if strategy.budget_unit is None:
        where, hint = "", "; write 8/255 for 8 of 255"
    else:
        where, hint = f" {strategy.budget_unit}s of {unit:.6g}", ""
    for name in strategy.budgets:
        value = cfg.strategy[name]
        for v in value if isinstance(value, (list, tuple)) else [value]:
            require(v <= 1 / unit, f"strategy.{name}", f"must be <= {1 / unit:.6g}{where} (L-inf "
                    f"budgets are at most 1 in [0, 1] image units{hint}), got {v:.6g}")


def stub_context(cfg: Config) -> RunContext:
    """What a component may size itself by before any data is loaded: the run's epochs, seed,
    data set name and learning-rate schedule are real; the sizes are placeholders (1 training
    image, 0 classes meaning unknown, a 3x32x32 input), so checks that need the data (e.g.
    ECAS's thresholds from the number of classes) wait for the real context."""
    import torch

    from .context import RunContext

    o = cfg.optim
    return RunContext(
        num_train=1, num_classes=0, input_shape=(3, 32, 32), epochs=cfg.epochs,
        batches_per_epoch=1, device=torch.device("cpu"), seed=cfg.seed, dataset=cfg.data.name,
        lr_at=make_schedule(o.schedule, o.lr, cfg.epochs, milestones=o.milestones, gamma=o.gamma,
                            peak_at=o.peak_at),
        first_decay_epoch=first_decay_epoch(o.schedule, cfg.epochs, milestones=o.milestones,
                                            peak_at=o.peak_at))
