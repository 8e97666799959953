"""The Python entry points a script needs beyond the modules: a trained run as a model.

``load_run(RUN)`` -> (model, config): the run's architecture with its ``best`` (or ``last``)
weights, in eval mode, on the CPU unless ``device`` says otherwise. The model follows the
contract of every adaptrain model: it takes images in [0, 1] of shape (B, C, H, W) and returns
logits (B, num_classes), the data set's normalisation inside it. Building the architecture
needs the data set's description (classes, channels, statistics), so the run's data set must
be readable (as for ``adaptrain eval RUN``). RUN may also be a checkpoint directory inside a
run. Errors are one line naming what to change (``checkpoint``, ``device``, ``run``).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .config import Config
from .errors import ConfigError

CHECKPOINTS = ("best", "last")


def load_run(run: str | Path, checkpoint: str = "best", device: str | torch.device = "cpu"
             ) -> tuple[nn.Module, Config]:
    """The model a run trained and the config it was trained with (see the module docstring)."""
    from . import checkpoint as ckpt
    from .runs import config_for, load_weights_into_model, parse_device

    if checkpoint not in CHECKPOINTS:
        raise ConfigError("checkpoint", f"{checkpoint!r} is not allowed; allowed: {', '.join(CHECKPOINTS)}")
    if not Path(run).exists():
        raise ConfigError("run", f"{run} does not exist")
    try:
        cfg, _ = config_for(str(run), None)
    except ConfigError as exc:
        if exc.field == "--config":  # the CLI's wording; here the argument is the run itself
            raise ConfigError("run", f"{run} is not a run directory (no config.yaml in it or two "
                              "levels up)") from None
        raise
    try:
        where = parse_device(str(device))
    except ConfigError as exc:  # the CLI names its flag; here it is the argument
        raise ConfigError("device", exc.message) from None
    weights = ckpt.resolve(Path(run), checkpoint)
    model, _ = load_weights_into_model(cfg, weights, where)
    return model, cfg
