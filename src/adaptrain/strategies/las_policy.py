"""LAS-AT's strategy network and the REINFORCE pieces it is trained with.

Jia et al. 2022, "LAS-AT: Adversarial Training with Learnable Attack Strategy", Sec. 3.1 and
Eqs. (10)-(13). The policy p(a | x; theta) is a backbone on the clean image followed by one
categorical head per attack parameter (eps, step size, iterations; + TRADES beta); a sample's
strategy is one option per head, drawn independently given the image, so
log p(a | x) = sum over heads of log p_h(a_h | x).

Shapes: x (B, C, H, W) in [0, 1]; logits per head (B, K_h); actions (B,) int64 option indices;
log-probabilities and entropies (B,), summed over heads.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..models import MODELS
from ..threat import Draws, draw

DEFAULT_BACKBONE: dict[str, Any] = {"name": "small_cnn", "width": 16}


class PolicyNet(nn.Module):
    """Backbone features -> one linear head per attack parameter.

    ``heads`` maps a parameter name to its number of options. The heads start at zero, so the
    initial policy is exactly uniform over every option list (the paper's Figure 4 starts from a
    distribution that "covers all the optional values").
    """

    def __init__(self, backbone: nn.Module, feature_dim: int, heads: Mapping[str, int]) -> None:
        super().__init__()
        self.backbone = backbone
        self.heads = nn.ModuleDict({name: nn.Linear(feature_dim, k) for name, k in heads.items()})
        for head in self.heads.values():
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """x (B, C, H, W) in [0, 1] -> {head: logits (B, K_h)}."""
        z = self.backbone(x)
        return {name: head(z) for name, head in self.heads.items()}


def build_policy(backbone: Mapping[str, Any] | None, input_shape: Sequence[int],
                 heads: Mapping[str, int]) -> PolicyNet:
    """A :class:`PolicyNet` whose backbone is any registered model (``{name, **fields}``).

    The backbone is built like a classifier and its linear head is dropped, keeping
    ``features(x)``. Its input normalisation is a fixed (x - 0.5) / 0.25: the policy sees the
    same [0, 1] images as the target, and its first BatchNorm absorbs any remaining scale.
    """
    spec = dict(backbone or DEFAULT_BACKBONE)
    if "name" not in spec:
        spec = {**DEFAULT_BACKBONE, **spec}
    c, h, w = (int(v) for v in input_shape)
    net = MODELS.build(spec, num_classes=1, in_channels=c, image_size=(h, w),
                       mean=(0.5,) * c, std=(0.25,) * c)
    net.head = nn.Identity()  # forward(x) == features(x)
    return PolicyNet(net, int(net.feature_dim), heads)


def sample(logits: torch.Tensor, generator: Draws) -> torch.Tensor:
    """One draw per row of a categorical with these logits (B, K) -> (B,) int64.

    Inverse-CDF sampling with one uniform per row from ``generator``, so a seeded generator
    (checkpointed with the strategy) reproduces the draws exactly on any device.
    """
    probs = F.softmax(logits.detach().float(), dim=1)
    u = draw(torch.rand, (probs.shape[0], 1), generator, device=probs.device, dtype=probs.dtype)
    return (probs.cumsum(dim=1) < u).sum(dim=1).clamp_(max=probs.shape[1] - 1)


def log_prob_and_entropy(logits: Mapping[str, torch.Tensor],
                         actions: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Joint log p(a | x) and entropy of the factorised policy, each (B,) summed over heads."""
    logp = ent = None
    for name, z in logits.items():
        lp_all = F.log_softmax(z.float(), dim=1)
        lp = lp_all.gather(1, actions[name][:, None]).squeeze(1)
        h = -(lp_all.exp() * lp_all).sum(dim=1)
        logp = lp if logp is None else logp + lp
        ent = h if ent is None else ent + h
    assert logp is not None and ent is not None
    return logp, ent


def reinforce_loss(log_prob: torch.Tensor, reward: torch.Tensor, baseline: torch.Tensor | float = 0.0,
                   entropy: torch.Tensor | None = None, entropy_coef: float = 0.0,
                   total: int | None = None) -> torch.Tensor:
    """Surrogate whose gradient is minus the REINFORCE estimate of Eq. (12), with a baseline.

    loss = -mean_i[(R_i - b) * log p(a_i | x_i)] - c * mean_i[H_i]. Minimising it ascends
    J(theta) = E[R]. The advantage is detached, so neither the reward nor the baseline carries
    gradient; a baseline b that does not depend on the current actions leaves the expected
    gradient unchanged (E[grad log p] = 0) and only lowers its variance. ``total``: the rows
    of the global batch when these are one rank's shard (its share of the mean: sum / total).
    """
    def mean(v: torch.Tensor) -> torch.Tensor:
        return v.mean() if total is None else v.sum() / total

    advantage = (reward - baseline).detach()
    loss = -mean(advantage * log_prob)
    if entropy is not None and entropy_coef:
        loss = loss - entropy_coef * mean(entropy)
    return loss
