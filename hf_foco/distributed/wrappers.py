"""What accelerate wraps around the objects it prepares, and how to reach the object inside."""

from __future__ import annotations

from accelerate.optimizer import AcceleratedOptimizer


def unwrap_optimizer(optimizer):
    """The torch optimizer under accelerate's wrapper (which passes no custom attribute through)."""
    return optimizer.optimizer if isinstance(optimizer, AcceleratedOptimizer) else optimizer
