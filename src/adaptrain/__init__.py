"""adaptrain: adversarial training with an adaptive adversary.

Strategies (who decides the budget) -> attacks (how examples are found) -> objectives (what
the model is trained on), plus optional adversarial weight perturbation. See DESIGN in the
repository's docs and ``adaptrain presets``.
"""

__version__ = "0.1.0"
