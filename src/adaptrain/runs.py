"""Finding and loading what a run trained: its config, its checkpoint, its model, its examples.

Library code beneath ``adaptrain eval`` and ``adaptrain calibrate-dra`` (and any script): a
target is a run directory (``RUN/config.yaml``), a checkpoint directory inside one, or a bare
weights file with the preset or YAML it was trained with. Errors name the command-line flag a
user would change (``--config``, ``--device``, ``--split``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from . import checkpoint
from .config import Config, build_config, load_config_file
from .errors import ConfigError


def config_for(target: str, config: str | None) -> tuple[Config, Path | None]:
    """-> (the config the model was trained with, its run directory or None). A config that
    cannot be found or read is reported against --config."""
    p = Path(target)
    run_dir = None
    if (p / "config.yaml").is_file():
        run_dir = p
    elif p.is_dir() and (p.parent.parent / "config.yaml").is_file():
        run_dir = p.parent.parent
    if config is not None:
        if not config.strip():
            raise ConfigError("--config", "empty; give a preset name or a YAML file")
        try:
            return build_config(config), run_dir
        except ConfigError as exc:
            if exc.field in ("preset", "base", config):
                raise ConfigError("--config", exc.message) from None
            raise
    if run_dir is not None:
        return load_config_file(run_dir / "config.yaml"), run_dir
    raise ConfigError("--config", f"{target} is not inside a run directory; give the preset "
                      "or YAML it was trained with (--config NAME_OR_YAML)")

def locate(target: str, which: str, config: str | None) -> tuple[Path, Config, Path | None]:
    """-> (weights path, config, run directory or None); in a checkpoint directory, the moving
    average of the weights when the run kept one (:func:`pick_weights`)."""
    cfg, run_dir = config_for(target, config)
    path = checkpoint.resolve(Path(target), which)
    return (pick_weights(path)[0] if path.is_dir() else path), cfg, run_dir

def pick_weights(directory: Path, which: str | None = None) -> tuple[Path, str]:
    """The weights file of checkpoint ``directory``: ``which`` ema | raw, or None for the
    moving average when the checkpoint has one (it is what the run selected on) and the raw
    weights otherwise. -> (file, "ema" | "raw")."""
    directory = Path(directory)
    has_ema = (directory / checkpoint.EMA_FILE).is_file()
    which = ("ema" if has_ema else "raw") if which is None else str(which)
    if which not in checkpoint.WEIGHTS:
        raise ConfigError("--weights", f"unknown {which!r}; allowed: {', '.join(checkpoint.WEIGHTS)}")
    if which == "ema" and not has_ema:
        raise ConfigError("--weights", f"{directory} holds no moving average of the weights (the "
                          "run had ema.decay=0); use --weights raw")
    return directory / (checkpoint.EMA_FILE if which == "ema" else checkpoint.MODEL_FILE), which


def parse_device(name: str) -> torch.device:
    """auto | cpu | cuda | cuda:N | mps, checked against this machine before anything loads."""
    name = str(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ConfigError("--device", "'mps' requested but no Apple GPU is available to torch "
                              "here; use --device cpu (or auto)")
        return torch.device("mps")
    m = re.fullmatch(r"cuda(?::(\d+))?", name)
    if m is None:
        raise ConfigError("--device", f"unknown {name!r}; allowed: auto, cpu, cuda, cuda:N, mps")
    if not torch.cuda.is_available():
        raise ConfigError("--device", f"{name!r} requested but CUDA is not available on this "
                          "machine; use --device cpu (or auto)")
    count = torch.cuda.device_count()
    if m.group(1) is not None and int(m.group(1)) >= count:
        raise ConfigError("--device", f"{name!r}: this machine has {count} CUDA device(s), "
                          f"cuda:0 .. cuda:{count - 1}")
    return torch.device(name)

def load_model(target: str, which: str = "best", config: str | None = None,
               device: str = "auto") -> tuple[torch.nn.Module, Config, Any, Path | None]:
    weights, cfg, run_dir = locate(target, which, config)
    model, arrays = load_weights_into_model(cfg, weights, parse_device(device))
    return model, cfg, arrays, run_dir

def load_weights_into_model(cfg: Config, weights: Path, device: torch.device) -> tuple[torch.nn.Module, Any]:
    """Build the config's model on ``device``, load ``weights``, eval mode; refuse NaN / inf."""
    from .data import load_arrays
    from .evaluate.guards import check_finite
    from .models import build_model

    arrays = load_arrays(cfg.data.name, cfg.data.root, cfg.data.download)
    model = build_model(cfg.model, arrays.spec).to(device)
    checkpoint.load_into(model, weights)
    model.eval()
    check_finite(model)
    return model, arrays


def split_arrays(cfg: Config, arrays: Any, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The run's ``test`` split, or its held-out ``val`` split (the one training selected on)."""
    from .data import make_splits

    if split == "test":
        return arrays.x_test, arrays.y_test
    sp = make_splits(arrays, subset=None, val_size=cfg.data.val_size, split_seed=cfg.data.split_seed)
    return sp.x_val, sp.y_val


def examples(cfg: Config, arrays: Any, split: str, n: int, say: Callable[[str], None] | None = print
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` examples of the split (all of them, said in one line through ``say``, if
    it is smaller)."""
    x, y = split_arrays(cfg, arrays, split)
    have = int(y.shape[0])
    if have == 0:
        raise ConfigError("--split", f"the {split} split of {cfg.data.name} is empty (the run's "
                          f"data.val_size is {cfg.data.val_size}); use --split test")
    if n > have and say is not None:
        say(f"note: the {split} split has {have} examples; evaluating all of them (--n {n})")
    return x[:n], y[:n]
