"""What evaluation asserts about the model instead of assuming it.

* finite weights and buffers: a diverged model (NaN / inf anywhere) is refused up front, named
  as such;
* eval mode for every module during every attack, and BatchNorm statistics unchanged at the
  end (an attack that ran BatchNorm in train mode would silently change the model);
* logits, not probabilities: a model whose outputs are non-negative and sum to one per row
  is refused (attacks on softmax outputs mask gradients);
* inputs in [0, 1] with normalisation inside the model: inputs outside the box give a
  warning, because attacks clip to [0, 1].
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from ..errors import AdaptrainError


class EvaluationError(AdaptrainError):
    """The model or the data cannot be evaluated as given."""


def assert_eval_mode(model: nn.Module, where: str) -> None:
    training = [n or type(m).__name__ for n, m in model.named_modules() if m.training]
    if training:
        raise EvaluationError("model", f"{where}: modules in train mode during evaluation "
                              f"({', '.join(training[:3])}); evaluation must use eval-mode BatchNorm")


def buffers_snapshot(model: nn.Module) -> list[torch.Tensor]:
    return [b.detach().clone() for b in model.buffers()]


def assert_buffers_unchanged(model: nn.Module, before: list[torch.Tensor]) -> None:
    """Every buffer as it was; NaN where there was NaN counts as unchanged (torch.equal would
    call a NaN buffer changed and blame train mode for what is a diverged model)."""
    for (name, b), old in zip(model.named_buffers(), before, strict=True):
        if not same_values(b, old):
            raise EvaluationError("model", f"BatchNorm statistics (or another buffer: {name}) changed "
                                  "during evaluation: an attack ran the model in train mode")


def same_values(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal shapes and values, NaN matching NaN."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if torch.equal(a, b):
        return True
    if not a.is_floating_point() and not a.is_complex():
        return False
    return bool(((a == b) | (torch.isnan(a) & torch.isnan(b))).all())


def check_finite(model: nn.Module) -> None:
    """Refuse a model whose weights or buffers hold NaN or inf: every number an evaluation
    would report for it is meaningless, and the cause is a diverged training run, not the
    evaluation (a NaN BatchNorm variance would otherwise surface as a train-mode error)."""
    from ..models import first_nonfinite

    name = first_nonfinite(model)
    if name is not None:
        t = model.state_dict()[name]
        bad = int((~torch.isfinite(t)).sum())
        kind = "weight" if name in dict(model.named_parameters()) else "buffer"
        raise EvaluationError("model", f"{kind} {name} holds {bad} non-finite value(s) (NaN or "
                              f"inf) of {t.numel()}: the model diverged in training; evaluate an "
                              "earlier checkpoint or retrain with a smaller learning rate")


def check_logits(logits: torch.Tensor) -> None:
    """Refuse probability outputs: every value in [0, 1] and every row summing to 1."""
    z = logits.detach().float()
    if z.numel() == 0:
        return
    in_unit = bool(((z >= -1e-6) & (z <= 1 + 1e-6)).all())
    rows_one = bool(((z.sum(dim=1) - 1).abs() < 1e-4).all())
    if in_unit and rows_one:
        raise EvaluationError("model", "its outputs look like probabilities (all in [0, 1], rows "
                              "sum to 1); evaluation needs logits: remove the final softmax")


def check_inputs(x: torch.Tensor) -> list[str]:
    """Warn (and return the warning) when images are not in [0, 1]."""
    if x.dtype == torch.uint8:
        return []
    lo, hi = float(x.min()), float(x.max())
    if lo < -1e-6 or hi > 1 + 1e-6:
        msg = (f"inputs span [{lo:.3f}, {hi:.3f}], outside [0, 1]: adaptrain models take [0, 1] "
               "images and normalise inside; pre-normalised inputs make every budget wrong")
        warnings.warn(msg, stacklevel=3)
        return [msg]
    return []


def has_internal_normalisation(model: nn.Module) -> bool:
    return isinstance(getattr(model, "mean", None), torch.Tensor) and isinstance(
        getattr(model, "std", None), torch.Tensor)


class Autocast(nn.Module):
    """Run ``model`` under bf16 autocast and return float32 logits (forward passes only)."""

    def __init__(self, model: nn.Module, device_type: str) -> None:
        super().__init__()
        self.model = model
        self.device_type = device_type

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device_type, dtype=torch.bfloat16):
            return self.model(x).float()


BF16_WARNING = ("bf16 autocast is on for the evaluation's forward passes: rounded logits can flatten "
                "gradients and overstate robustness (gradient masking); report fp32 numbers")
