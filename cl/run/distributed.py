"""Data-parallel helpers for ``torchrun --nproc_per_node=K experiments/cl.py ...``.

The engine stays one code path for one and for many processes; everything that differs is here:

* :func:`init_from_env` joins the process group that ``torchrun`` describes in the environment
  (``gloo`` on CPU; ``cpu:gloo,cuda:nccl`` on GPUs, so float64 statistics on the CPU and
  gradients on the GPU each take a backend that supports them);
* :class:`SharedShuffleSampler` shards training data like ``DistributedSampler`` but draws each
  epoch's permutation from a generator that every rank advances identically (and that the engine
  checkpoints), so no ``set_epoch`` call is needed inside the methods' epoch loops;
* :func:`eval_shard` splits evaluation data without padding: every image is counted once;
* :func:`sync_gradients` averages gradients over ranks with per-parameter hooks (the methods call
  ``backward`` / ``step`` on plain modules, so no ``DistributedDataParallel`` wrapper is needed);
* :class:`DistContext` carries rank and world size and the few collectives the engine needs.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset, DistributedSampler, Subset

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistContext:
    """Rank, world size and local rank of this process (``1`` process when not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Only the main process (rank 0) writes files."""
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def broadcast_object(self, obj: Any = None) -> Any:
        """Rank 0's ``obj`` on every rank (pickled; fine for checkpoints and small decisions)."""
        if not self.enabled:
            return obj
        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def all_sum(self, values: Sequence[float]) -> list[float]:
        """Element-wise sum over ranks, in float64 (exact for counts)."""
        tensor = torch.tensor(list(values), dtype=torch.float64)
        if self.enabled:
            dist.all_reduce(tensor)
        return tensor.tolist()

    def all_true(self, flag: bool) -> bool:
        """``True`` only if ``flag`` holds on every rank (so all ranks take the same branch)."""
        if not self.enabled:
            return flag
        tensor = torch.tensor([1 if flag else 0], dtype=torch.int64)
        dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
        return bool(tensor.item())


def current_context() -> DistContext:
    """The context of an initialised process group, else a single-process context."""
    if dist.is_available() and dist.is_initialized():
        return DistContext(dist.get_rank(), dist.get_world_size(),
                           int(os.environ.get("LOCAL_RANK", dist.get_rank())))
    return DistContext()


def init_from_env(device: torch.device) -> DistContext:
    """Join the process group described by ``torchrun``'s environment, if any.

    Does nothing when ``WORLD_SIZE`` is unset or 1, or when a group already exists (a test or a
    caller initialised it).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and dist.is_available() and not dist.is_initialized():
        backend = "cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend)
        log.info("joined process group: rank %d of %d (%s)", dist.get_rank(), world, backend)
    return current_context()


@contextlib.contextmanager
def process_group(device: torch.device) -> Iterator[DistContext]:
    """Join ``torchrun``'s process group for the duration of a run, then leave it cleanly.

    A group joined here is destroyed on the way out, after a final barrier when the run succeeded
    (so no rank exits while another still talks to it). Without the explicit
    ``destroy_process_group`` a gloo rank can abort at interpreter exit ("terminate called without
    an active exception", SIGABRT) while its background threads are still joinable. A group that
    already existed (created by a caller) is left alone.
    """
    joins = (int(os.environ.get("WORLD_SIZE", "1")) > 1 and dist.is_available()
             and not dist.is_initialized())
    ctx = init_from_env(device)
    try:
        yield ctx
        if joins:
            ctx.barrier()
    finally:
        if joins and dist.is_initialized():
            dist.destroy_process_group()


def local_device(device: torch.device, ctx: DistContext) -> torch.device:
    """``cuda`` without an index becomes this process's GPU (``cuda:LOCAL_RANK``)."""
    if ctx.enabled and device.type == "cuda" and device.index is None:
        device = torch.device("cuda", ctx.local_rank)
        torch.cuda.set_device(device)
    return device


class SharedShuffleSampler(DistributedSampler):
    """``DistributedSampler`` whose permutation comes from a shared, checkpointed generator.

    Every ``__iter__`` (one per epoch) draws a fresh permutation from ``generator``; all ranks
    hold the same generator state, so they agree on the permutation and each takes its strided
    share. As in ``DistributedSampler(drop_last=False)``, the permutation is padded by wrapping
    around so every rank gets the same number of samples (and takes the same number of steps).
    """

    def __init__(self, dataset: Dataset, ctx: DistContext, generator: torch.Generator) -> None:
        super().__init__(dataset, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True,
                         drop_last=False)
        self.generator = generator

    def __iter__(self) -> Iterator[int]:
        order = torch.randperm(len(self.dataset), generator=self.generator).tolist()
        pad = self.total_size - len(order)
        while pad > 0:  # wrap around, possibly several times for tiny datasets
            order += order[:pad]
            pad = self.total_size - len(order)
        return iter(order[self.rank:self.total_size:self.num_replicas])


def eval_shard(dataset: Dataset, ctx: DistContext) -> Dataset:
    """This rank's strided share of ``dataset``, without padding (each item on one rank)."""
    if not ctx.enabled:
        return dataset
    return Subset(dataset, list(range(ctx.rank, len(dataset), ctx.world_size)))


def _unique_parameters(modules: Sequence[nn.Module]) -> list[nn.Parameter]:
    seen: set[int] = set()
    params = []
    for module in modules:
        for p in module.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                params.append(p)
    return params


def modules_of(obj: object) -> list[nn.Module]:
    """The ``nn.Module`` attributes of a method object (its models), in attribute order."""
    return [v for v in vars(obj).values() if isinstance(v, nn.Module)]


def broadcast_parameters(modules: Sequence[nn.Module], ctx: DistContext) -> None:
    """Copy rank 0's parameters and buffers to every rank (guards against any init drift)."""
    if not ctx.enabled:
        return
    seen: set[int] = set()
    for module in modules:
        for tensor in (*module.parameters(), *module.buffers()):
            if id(tensor) not in seen:
                seen.add(id(tensor))
                with torch.no_grad():
                    dist.broadcast(tensor.data, src=0)


def sync_gradients(modules: Sequence[nn.Module], ctx: DistContext) -> list[Any]:
    """Average every parameter's gradient over ranks as soon as backward has accumulated it.

    All ranks run the same graph on equally sized batches (see :class:`SharedShuffleSampler`),
    so the hooks fire in the same order everywhere and the mean of the per-rank mean losses is
    the mean over the global batch. Only parameters that require grad now get a hook; call it
    again (after removing the old handles) when a method changes what it trains. Returns the
    hook handles (``handle.remove()`` to undo).
    """
    if not ctx.enabled:
        return []
    world = float(ctx.world_size)

    def average(p: torch.Tensor) -> None:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad.div_(world)

    return [p.register_post_accumulate_grad_hook(average)
            for p in _unique_parameters(modules) if p.requires_grad]
