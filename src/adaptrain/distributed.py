"""One process or many (``torchrun``): the world a run lives in and the few collectives it uses.

``World.from_env()`` reads torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK,
LOCAL_WORLD_SIZE) and joins the process group: nccl with one GPU per rank (LOCAL_RANK) on CUDA,
gloo on CPU. Without them it is the single process (``SINGLE``), whose collectives are no-ops,
so the one-process path runs exactly the code it ran before.

Contract: a global batch of B rows is split into contiguous shards, rank r holding rows
``shard(B)`` (sizes differ by at most one, earlier ranks larger); ``gather_rows`` puts the
per-rank (b_r, ...) tensors back into the (B, ...) global order; ``sum_`` all-reduces in place.
Design (what is reduced where, and why): docs/distributed.md.
"""

from __future__ import annotations

import atexit
import datetime
import os
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .threat import Rows

# a rank that waits longer than this for the others gives up (a peer died or hangs) instead of
# hanging forever; torchrun then ends every rank
TIMEOUT = datetime.timedelta(minutes=int(os.environ.get("ADAPTRAIN_DIST_TIMEOUT_MIN", "30")))


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1

    @property
    def main(self) -> bool:
        """Rank 0: the one that writes files and prints."""
        return self.rank == 0

    @property
    def many(self) -> bool:
        return self.size > 1

    @staticmethod
    def from_env(device: str = "auto") -> World:
        """The world torchrun describes in the environment (joined once), else ``SINGLE``."""
        size = int(os.environ.get("WORLD_SIZE", "1"))
        if size <= 1:
            return SINGLE
        world = World(rank=int(os.environ["RANK"]), size=size,
                      local_rank=int(os.environ.get("LOCAL_RANK", "0")),
                      local_size=int(os.environ.get("LOCAL_WORLD_SIZE", str(size))))
        if not dist.is_initialized():
            cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
            if cuda:
                torch.cuda.set_device(world.local_rank)
            dist.init_process_group("nccl" if cuda else "gloo", timeout=TIMEOUT,
                                    **_attempt_store(world))
            # leave while Python is whole: a group alive at interpreter shutdown can abort the
            # rank (gloo's threads free tensors that need the GIL as Python is torn down)
            atexit.register(world.close)
        return world

    def device(self, name: str) -> str:
        """The device this rank uses for a configured ``device``: its own GPU on CUDA."""
        if self.many and (name == "cuda" or (name == "auto" and torch.cuda.is_available())):
            return f"cuda:{self.local_rank}"
        return name

    # -- batches ---------------------------------------------------------------------------

    def shard(self, total: int) -> Rows:
        """This rank's contiguous rows of a global batch of ``total`` rows."""
        return Rows.shard(total, self.rank, self.size)

    def gather_rows(self, t: torch.Tensor, total: int) -> torch.Tensor:
        """The (total, ...) global tensor from every rank's shard (b_r, ...) of it."""
        if not self.many:
            return t
        if t.dtype == torch.bool:  # not every backend gathers bool
            return self.gather_rows(t.to(torch.uint8), total).bool()
        width = -(-total // self.size)  # the largest shard; smaller ones are padded to it
        padded = t.new_zeros((width, *t.shape[1:]))
        padded[: t.shape[0]] = t
        parts = [torch.empty_like(padded) for _ in range(self.size)]
        dist.all_gather(parts, padded.contiguous())
        sizes = [Rows.shard(total, r, self.size) for r in range(self.size)]
        return torch.cat([p[: s.stop - s.start] for p, s in zip(parts, sizes, strict=True)])

    def gather_batch(self, total: int, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """:meth:`gather_rows` of each of ``tensors`` (the tensors themselves in one process)."""
        return tuple(self.gather_rows(t, total) for t in tensors)

    # -- reductions ------------------------------------------------------------------------

    def sum_(self, *tensors: torch.Tensor) -> None:
        """All-reduce (sum) in place; one collective for all of them."""
        if not self.many or not tensors:
            return
        flat = torch.cat([t.reshape(-1).to(torch.float64) for t in tensors])
        dist.all_reduce(flat)
        at = 0
        for t in tensors:
            n = t.numel()
            t.copy_(flat[at: at + n].view_as(t).to(t.dtype))
            at += n

    def mean(self, v: torch.Tensor, total: int) -> torch.Tensor:
        """The mean of a per-sample quantity over the global batch of ``total`` rows, from this
        rank's shard ``v`` (b,) (``v.mean()`` itself in a single process)."""
        if not self.many:
            return v.mean()
        s = v.sum().double().reshape(1)
        self.sum_(s)
        return (s[0] / total).to(v.dtype)

    def sum_grads_(self, params: Iterable[torch.nn.Parameter]) -> None:
        """All-reduce (sum) the gradients of ``params`` (a module DDP does not wrap: AWP's proxy,
        LAS-AT's policy), in one flat buffer."""
        if not self.many:
            return
        grads = [p.grad for p in params if p.grad is not None]
        if grads:
            flat = torch.cat([g.reshape(-1) for g in grads])
            dist.all_reduce(flat)
            at = 0
            for g in grads:
                g.copy_(flat[at: at + g.numel()].view_as(g))
                at += g.numel()

    def broadcast_(self, *tensors: torch.Tensor) -> None:
        """Rank 0's values everywhere (e.g. BatchNorm statistics before an evaluation)."""
        if self.many:
            for t in tensors:
                dist.broadcast(t, 0)

    def any(self, flag: bool) -> bool:
        """True on every rank if it is on any (to fail together instead of hanging)."""
        if not self.many:
            return flag
        t = torch.tensor([int(flag)], device=self._collective_device())
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def barrier(self) -> None:
        if self.many:
            dist.barrier()

    def _collective_device(self) -> torch.device:
        nccl = dist.get_backend() == "nccl"
        return torch.device(f"cuda:{self.local_rank}") if nccl else torch.device("cpu")

    def close(self) -> None:
        if self.many and dist.is_initialized():
            dist.destroy_process_group()


SINGLE = World()


def _attempt_store(world: World) -> dict:
    """Under torchrun, a store whose keys are this restart attempt's own: with
    ``--max-restarts`` the agent's store outlives the ranks it restarts, and a restarted rank
    would otherwise read the dead ranks' addresses (gloo: "connection refused")."""
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True" or "MASTER_PORT" not in os.environ:
        return {}  # env:// as usual (another launcher)
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]),
                          world_size=world.size, is_master=False, timeout=TIMEOUT)
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    return {"store": dist.PrefixStore(f"adaptrain/attempt_{attempt}", store),
            "rank": world.rank, "world_size": world.size}
