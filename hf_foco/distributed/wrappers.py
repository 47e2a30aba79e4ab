"""What accelerate wraps around the objects it prepares, and how to reach the object inside."""

from __future__ import annotations

import torch
from accelerate.optimizer import AcceleratedOptimizer


def unwrap_optimizer(optimizer):
    """The torch optimizer under accelerate's wrapper (which passes no custom attribute through)."""
    return optimizer.optimizer if isinstance(optimizer, AcceleratedOptimizer) else optimizer


def find_ddp(model: torch.nn.Module) -> torch.nn.parallel.DistributedDataParallel | None:
    """The DistributedDataParallel module ``model`` is, or wraps through ``torch.compile``, or None.

    accelerate compiles a model after wrapping it in DDP (``--torch_compile``), so a Trainer's training step
    receives the compiled wrapper (an ``OptimizedModule``) with the DDP module under ``_orig_mod``. Hooks
    registered on that DDP module run under the compiled model: dynamo splits the backward at DDP's bucket
    boundaries and the reducer calls the hook for each bucket.
    """
    while model is not None and not isinstance(model, torch.nn.parallel.DistributedDataParallel):
        model = getattr(model, "_orig_mod", None)
    return model
