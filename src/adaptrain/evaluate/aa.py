"""AutoAttack through the authors' own implementation (PyPI ``pyautoattack``).

Each sub-attack runs through ``AutoAttack.run_standard_evaluation`` with the settings of the
chosen version (``standard``: APGD-CE, APGD-T with 9 target classes, FAB-T, Square with 5,000
queries; ``rand``: APGD-CE / APGD-DLR with 20 EOT iterations), restricted to one sub-attack at
a time so that adaptrain's cascade can record per-sub-attack accuracy and time, and resume
between chunks. The official code seeds its attacks per batch, so a chunk gives the same
result whether it runs alone or inside a longer evaluation, but an example's result depends on
the chunk it is in (its row of the random draws): the batch size is therefore part of the
resumable state's key when AutoAttack runs, and a resumed job re-forms the same chunks. Its
warnings (randomised or dynamic defence, probability outputs, zero gradients, Square stronger
than the white-box attacks) are captured and reported as AutoAttack's flags. The global RNG
state, which the official code reseeds, is restored afterwards.
"""

from __future__ import annotations

import logging
from importlib import metadata

import torch
from torch import nn

from .guards import EvaluationError

_NORMS = {"linf": "Linf", "l2": "L2", "l1": "L1"}

# Sharded evaluation (torchrun) deals whole chunks of --batch-size examples to the ranks, the
# chunks one process would run, so each AutoAttack call sees the inputs and seed it would see
# alone. Recorded in the result's provenance: measured identical per example, every
# sub-attack of the standard version, 1 vs 2 CPU ranks (docs/evaluation.md).
SHARDING = {
    "identical_per_example": True,
    "how": "whole chunks of --batch-size examples dealt to the ranks (the chunks of one process)",
    "measured": "docs/evaluation.md, 'Sharded evaluation'",
}


def version() -> str | None:
    try:
        return metadata.version("pyautoattack")
    except metadata.PackageNotFoundError:
        return None


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if msg not in self.messages:
            self.messages.append(msg)


def aa_correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor, sub: str, *, eps: float,
               norm: str, seed: int, version_name: str = "standard") -> tuple[torch.Tensor, list[str]]:
    """(b,) bool still correct after AutoAttack sub-attack ``sub``, and the flags it raised.

    The model must already be frozen in eval mode (parameters without gradients)."""
    try:
        from pyautoattack import AutoAttack
    except ImportError:  # pragma: no cover - a dependency
        raise EvaluationError("aa", "the official AutoAttack package is missing: "
                              "pip install pyautoattack") from None
    if norm not in _NORMS:
        raise EvaluationError("--norm", f"AutoAttack supports {', '.join(_NORMS)}, got {norm!r}")
    if x.shape[0] == 0:
        return torch.zeros(0, dtype=torch.bool, device=x.device), []
    logger = logging.getLogger("auto-attack")
    capture = _Capture()
    logger.addHandler(capture)
    level = logger.level
    logger.setLevel(logging.WARNING)
    cpu_rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    try:
        adversary = AutoAttack(model, norm=_NORMS[norm], eps=float(eps), version=version_name,
                               seed=int(seed), device=x.device)
        adversary.verbose = False
        adversary.attacks_to_run = [sub]
        x_adv, _ = adversary.run_standard_evaluation(x, y, batch_size=int(x.shape[0]))
        with torch.no_grad():
            correct = model(x_adv).argmax(1) == y
        # the official code returns the clean input for samples it did not break; check the
        # budget of the ones it did, as a guard against a mis-set norm or eps
        delta = (x_adv - x).flatten(1)
        size = delta.abs().amax(1) if norm == "linf" else delta.norm(p=2 if norm == "l2" else 1, dim=1)
        if bool((size > float(eps) * (1 + 1e-4) + 1e-6).any()):
            raise EvaluationError("aa", f"{sub} returned a perturbation outside the {norm} ball of {eps}")
    finally:
        logger.removeHandler(capture)
        logger.setLevel(level)
        torch.set_rng_state(cpu_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
    return correct, capture.messages
