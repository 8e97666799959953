"""Exact forward / backward pass counting for cost comparisons.

One "F" is a forward pass of the model over a full batch of B rows, one "B" a backward pass
over B rows: a compacted attack step over b < B active rows counts b / B. Counting rows makes
the numbers independent of timing noise, so benchmarks can report them next to wall time.

Passes that call ``model.features`` directly (UIAT's feature regulariser, the shared clean
pass of :meth:`adaptrain.context.Batch.clean_features`) are counted too, once: a ``features``
call made from inside ``model.forward`` is part of that forward.

Backward rows are also counted apart by what they compute: ``weight_backward_rows`` are rows
whose forward ran with gradients enabled while some parameter of the model required a gradient
(a training loss: the backward produces weight gradients), the rest (an attack's step through a
frozen model) yield input gradients only, which costs less.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class PassCount:
    forward_rows: int = 0
    backward_rows: int = 0
    weight_backward_rows: int = 0  # of backward_rows: those that also computed weight gradients

    def per_batch(self, batch_size: int, batches: int = 1) -> tuple[float, float]:
        """(F, B) in units of full-batch passes, averaged over ``batches``."""
        n = batch_size * batches
        return self.forward_rows / n, self.backward_rows / n


@contextmanager
def count_passes(model: nn.Module) -> Iterator[PassCount]:
    """Count rows through ``model.forward`` (or a direct ``model.features`` call) and rows
    whose gradient flows back through it."""
    count = PassCount()
    depth = [0]  # > 0 while inside model.forward

    def record(output: torch.Tensor) -> None:
        count.forward_rows += int(output.shape[0])
        if output.requires_grad:
            weights = torch.is_grad_enabled() and any(p.requires_grad for p in model.parameters())

            def on_backward(grad: torch.Tensor) -> None:
                count.backward_rows += int(grad.shape[0])
                if weights:
                    count.weight_backward_rows += int(grad.shape[0])
            output.register_hook(on_backward)

    def enter(module: nn.Module, args: tuple) -> None:
        depth[0] += 1

    def leave(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        depth[0] -= 1
        record(output)

    handles = [model.register_forward_pre_hook(enter), model.register_forward_hook(leave)]
    features = getattr(model, "features", None)
    patched = callable(features) and not isinstance(features, nn.Module)
    if patched:
        def counted_features(x: torch.Tensor) -> torch.Tensor:
            out = features(x)
            if depth[0] == 0:
                record(out)
            return out

        model.features = counted_features  # instance attribute shadows the method
    try:
        yield count
    finally:
        for h in handles:
            h.remove()
        if patched:
            del model.features
