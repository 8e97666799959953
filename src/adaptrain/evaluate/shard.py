"""Sharded evaluation: how a job's examples are cut into chunks and dealt to the ranks of a
:class:`~adaptrain.distributed.World`, and the two collectives that carry results (any
picklable object, gathered or broadcast).

A job's examples still to do are cut into chunks in index order; chunk j runs on rank
``j % size``, so one *step* is ``size`` consecutive chunks, one per rank. After each step every
rank receives every chunk's per-example results and records them in its copy of the state, in
chunk order: all ranks hold the same state, compute the same survivors and so run the same
cascade, and the state rank 0 saves always holds whole chunks, in order (resumable on any number
of ranks).

Two kinds of job:

* ``keyed`` (clean, own PGD / CW / FGSM): an example's result does not depend on the other
  examples of its chunk (random starts are keyed by example index), so the chunks are sized to
  balance the ranks (at most ``batch_size``; exactly ``batch_size`` in a single process, as before).
* not keyed (AutoAttack, which seeds per call and draws per row; corruptions, whose noise is
  seeded by the chunk's first example): chunks are always ``batch_size`` examples, cut from the
  same list as in a single process, so every chunk, wherever it runs, is one the single process
  would have run.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ..distributed import World


def chunks(todo: torch.Tensor, batch_size: int, size: int, keyed: bool) -> list[torch.Tensor]:
    """``todo`` (k,) example indices cut into chunks; chunk j is run by rank ``j % size``."""
    total = int(todo.numel())
    width = batch_size
    if keyed and size > 1 and total:
        steps = -(-total // (size * batch_size))  # as few steps as batch_size allows ...
        width = -(-total // (steps * size))  # ... with the ranks' chunks as even as possible
    return [todo[i:i + width] for i in range(0, total, width)]


def gather_objects(world: World, obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order, on every rank (``[obj]`` alone)."""
    if not world.many:
        return [obj]
    out: list[Any] = [None] * world.size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(world: World, obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not world.many:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, 0)
    return box[0]


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel: evaluation must not run DDP's forward, whose
    buffer broadcast is a collective that ranks running different numbers of forwards would
    never all reach."""
    from torch.nn.parallel import DistributedDataParallel

    return model.module if isinstance(model, DistributedDataParallel) else model
