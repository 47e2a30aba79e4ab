"""Collectives the optimizers need beyond DDP's own gradient all-reduce."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def all_reduce_mean(tensors: Sequence[torch.Tensor]) -> None:
    """Average ``tensors`` in place over the default process group (one coalesced call); no-op when alone."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    world = torch.distributed.get_world_size()
    if world == 1 or not tensors:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    torch.distributed.all_reduce(flat)
    flat /= world
    offset = 0
    for t in tensors:
        t.copy_(flat[offset:offset + t.numel()].view_as(t))
        offset += t.numel()
