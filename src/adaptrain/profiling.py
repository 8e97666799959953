"""Exact forward / backward pass counting for cost comparisons.

One "F" is a forward pass of the model over a full batch of B rows, one "B" a backward pass
over B rows: a compacted attack step over b < B active rows counts b / B. Counting rows makes
the numbers independent of timing noise, so benchmarks can report them next to wall time.
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

    def per_batch(self, batch_size: int, batches: int = 1) -> tuple[float, float]:
        """(F, B) in units of full-batch passes, averaged over ``batches``."""
        n = batch_size * batches
        return self.forward_rows / n, self.backward_rows / n


@contextmanager
def count_passes(model: nn.Module) -> Iterator[PassCount]:
    """Count rows through ``model.forward`` and rows whose gradient flows back through it."""
    count = PassCount()

    def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        rows = int(output.shape[0])
        count.forward_rows += rows
        if output.requires_grad:
            def on_backward(grad: torch.Tensor) -> None:
                count.backward_rows += int(grad.shape[0])
            output.register_hook(on_backward)

    handle = model.register_forward_hook(hook)
    try:
        yield count
    finally:
        handle.remove()
