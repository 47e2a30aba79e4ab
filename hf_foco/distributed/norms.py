"""Norms of whole tensors that may be FSDP2 shards (DTensors), from local shards and one collective.

The stability monitor and the checkpoint guard need per-tensor norms of parameters, gradients and updates.
Under FSDP2 those are DTensors: DTensor arithmetic would run one collective per tensor (and mixing a DTensor
with a plain index tensor raises). Here each rank takes the squared norms of its local shards in one
fused kernel, and a single all-reduce of that vector gives every rank the norms of the whole tensors, so
all ranks reach the same verdict (a skipped step or a refused checkpoint happens on every rank or none).

A shard's contribution is counted once per copy of the whole tensor: a tensor replicated over a mesh
dimension (HSDP's replica groups, a plain tensor beside DTensors) is divided by its number of copies
before the sum. The squares are summed in float64, so a finite norm never overflows into a false alarm.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor


def _copies(tensor: torch.Tensor, world: int) -> int:
    """On how many ranks the local shard of ``tensor`` is held identically (every rank: a plain tensor)."""
    if not isinstance(tensor, DTensor):
        return world
    mesh = tensor.device_mesh
    if mesh.size() != world:
        raise ValueError(f"A DTensor on a device mesh of {mesh.size()} of the {world} processes: the norms here "
                         "need every sharded tensor to span all processes (FSDP or HSDP over the whole job).")
    if any(placement.is_partial() for placement in tensor.placements):
        raise ValueError("A DTensor with a partial (pending-reduction) placement has no local norm: reduce it "
                         "first (FSDP2 hands the optimizer sharded, already reduced parameters and gradients).")
    return math.prod(mesh.size(d) for d, placement in enumerate(tensor.placements) if placement.is_replicate())


def squared_norms(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """The squared L2 norm of each whole tensor, as one float64 vector, identical on every rank.

    Plain tensors: one fused norm kernel, no communication. With any DTensor among them: the same kernel on
    the local shards and one all-reduce over the default process group.
    """
    if not tensors:
        return torch.zeros(0, dtype=torch.float64)
    sharded = any(isinstance(t, DTensor) for t in tensors)
    local = [t.to_local() if isinstance(t, DTensor) else t for t in tensors]
    device = local[0].device
    squares = torch.stack([n.to(device=device, dtype=torch.float64) for n in torch._foreach_norm(local)]).square()
    if sharded:
        world = dist.get_world_size()
        squares /= torch.tensor([_copies(t, world) for t in tensors], dtype=torch.float64, device=device)
        dist.all_reduce(squares)
    return squares


def all_finite(tensors: Sequence[torch.Tensor]) -> bool:
    """True when every entry of every (whole) tensor is finite: one norm kernel, one collective if sharded."""
    return bool(torch.isfinite(squared_norms(tensors).sum()))
