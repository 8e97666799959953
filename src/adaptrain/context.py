"""Objects the training loop hands to strategies, objectives and regularisers.

:class:`RunContext` is fixed for a run (sizes, lr schedule, seed) and numbers its random
streams (:class:`Stream`). :class:`Batch` is one step's data — x (B, C, H, W) in [0, 1], y
(B,), idx (B,) loader indices — plus a cache under typed keys (:class:`CacheKey`). The clean
logits / features are computed once per BatchNorm mode: ECAS's entropy and TRADES's KL
reference (both ``eval``) share one no-grad forward, while UIAT's targets use its
``target_bn`` mode (``batch`` by default, a pass of its own). UIAT's targets and GradAlign's
eta are cached too, so AWP's proxy call and the real step see the same values.
:class:`Feedback` is what a strategy observes after the backward pass, before the step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum, IntEnum
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .attacks.engine import frozen_model
from .distributed import SINGLE, World
from .threat import Rows, ShardDraws

if TYPE_CHECKING:  # annotations only: objectives and AWP import this module
    from .attacks import Attack, AttackPlan, AttackResult
    from .awp import AWP
    from .objectives import Objective


class Stream(IntEnum):
    """Every random stream of a run, in one table: ``RunContext.generator(Stream.X)`` is seeded
    with ``seed * 1_000_003 + X``. A stream per role keeps one component's draws independent
    of another's (adding a regulariser must not change the loader's order); a new role takes
    a new number here."""

    LOADER = 1  # shuffling and augmentation
    ATTACK = 2  # the training attack's random starts
    ECAS = 105  # ECAS's per-sample budget draws
    UIAT_INIT = 107  # UIAT's class perturbations z_c at initialisation
    GRADALIGN = 131  # GradAlign's eta
    LAS_SAMPLE = 180  # LAS-AT's action sampling
    LAS_REWARD_ATTACK = 181  # LAS-AT's reward attack
    LAS_INIT = 182  # LAS-AT's policy initialisation (seeds torch's global RNG inside a fork)


@dataclass(frozen=True)
class RunContext:
    """Facts about the run that components may size themselves by."""

    num_train: int  # indices the loader yields (real images, then data.extra): per-sample state size
    num_classes: int
    input_shape: tuple[int, int, int]  # (C, H, W)
    epochs: int
    batches_per_epoch: int
    device: torch.device
    seed: int
    dataset: str = ""
    lr_at: Callable[[float], float] = lambda t: 0.0  # lr at fractional epoch t
    first_decay_epoch: int | None = None  # first epoch whose lr is below the peak (None: no decay)
    world: World = SINGLE  # the ranks sharing each batch: state that spans the batch reduces here

    def seed_of(self, stream: Stream) -> int:
        return self.seed * 1_000_003 + int(stream)

    def generator(self, stream: Stream) -> torch.Generator:
        """A generator on the run's device for one role (see :class:`Stream`)."""
        g = torch.Generator(device=self.device)
        g.manual_seed(self.seed_of(stream))
        return g


class Cached(Enum):
    """What a batch caches so that several components share one computation."""

    CLEAN_LOGITS = "clean_logits"  # (B, C) float, no grad: ECAS's entropy, TRADES's KL reference
    CLEAN_FEATURES = "clean_features"  # (B, D) float, no grad: UIAT's feature term
    UIAT_TARGETS = "uiat_targets"  # UIAT's KL targets, shared by AWP's proxy and the real step
    GRADALIGN_ETA = "gradalign_eta"  # GradAlign's random point, the same for proxy and real step


@dataclass(frozen=True)
class CacheKey:
    """A typed key of ``Batch.cache``: what, and in which BatchNorm mode it was computed."""

    what: Cached
    bn: str = "eval"


@dataclass
class StepInfo:
    epoch: int  # 0-based
    batch: int  # 0-based index within the epoch
    global_step: int
    lr: float


@dataclass
class Batch:
    """One training batch: x (b, C, H, W) in [0, 1], y (b,), idx (b,) loader indices; ``rows``:
    which rows of the global batch these b are (all of it in a single process)."""

    model: nn.Module
    x: torch.Tensor
    y: torch.Tensor
    idx: torch.Tensor
    step: StepInfo
    cache: dict[CacheKey, Any] = field(default_factory=dict)
    rows: Rows | None = None

    def __post_init__(self) -> None:
        if self.rows is None:
            self.rows = Rows.all(int(self.x.shape[0]))

    def draws(self, generator: torch.Generator) -> ShardDraws:
        """``generator`` drawing per row of the global batch (see :func:`threat.draw`), so a
        shard gets exactly the numbers its rows get in a single process."""
        return ShardDraws(generator, self.rows)

    def clean_logits(self, bn: str = "eval") -> torch.Tensor:
        """Clean logits (B, C), computed once per batch and BatchNorm mode (``eval``: running
        statistics; ``batch``: the batch's own, see :func:`frozen_model`) without gradients and
        without changing BatchNorm statistics."""
        key = CacheKey(Cached.CLEAN_LOGITS, bn)
        if key not in self.cache:
            if _has_features(self.model):
                self.clean_features(bn)  # the same forward, keeping the features for UIAT
            else:
                with torch.no_grad(), frozen_model(self.model, bn):
                    self.cache[key] = self.model(self.x).float()
        return self.cache[key]

    def clean_features(self, bn: str = "eval") -> torch.Tensor:
        """Clean penultimate features (B, D) (``model.features``) in BatchNorm mode ``bn``, from
        the same no-grad forward that fills :meth:`clean_logits` (logits =
        ``model.head(features)``)."""
        key = CacheKey(Cached.CLEAN_FEATURES, bn)
        if key not in self.cache:
            with torch.no_grad(), frozen_model(self.model, bn):
                feats = self.model.features(self.x)
                self.cache[key] = feats.float()
                self.cache.setdefault(CacheKey(Cached.CLEAN_LOGITS, bn), self.model.head(feats).float())
        return self.cache[key]




def _has_features(model: nn.Module) -> bool:
    return callable(getattr(model, "features", None)) and isinstance(getattr(model, "head", None),
                                                                     nn.Module)


@dataclass
class Feedback:
    """What a strategy observes after the training loss of a batch was back-propagated.

    Parameter gradients (``p.grad``) are still populated and the weights are those the loss
    was computed with (AWP-perturbed when AWP is on: ``awp`` then holds the perturbation that
    is subtracted again after the step); the optimiser step comes after
    :meth:`Strategy.observe` returns.
    """

    batch: Batch
    plan: AttackPlan
    result: AttackResult
    loss: torch.Tensor  # (B,) per-sample training loss, detached
    logits_adv: torch.Tensor | None  # (B, C) train-mode logits on x_adv when the objective has them
    optimizer: torch.optim.Optimizer
    objective: Objective
    attack: Attack
    awp: AWP | None = None  # AWP when its perturbation is on the weights this step, else None
