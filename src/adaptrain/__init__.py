"""adaptrain: adversarial training with an adaptive adversary.

Strategies (who decides the budget) -> attacks (how examples are found) -> objectives (what
the model is trained on), plus optional adversarial weight perturbation. See DESIGN in the
repository's docs and ``adaptrain presets``. ``adaptrain.load_run(RUN)`` gives a trained run
back as (model, config).
"""

__version__ = "0.1.0"

__all__ = ["load_run"]


def __getattr__(name: str):
    # imported on first use: ``import adaptrain`` (the CLI's first line) stays free of torch
    if name == "load_run":
        from .api import load_run

        return load_run
    raise AttributeError(f"module 'adaptrain' has no attribute {name!r}")
