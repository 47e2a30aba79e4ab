"""Vectors in parameter space, held as lists of parameter-shaped tensors (a layer's weight and bias, or a
whole model's parameters), and the inner product the curvature code uses."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def dot(xs: Sequence[torch.Tensor], ys: Sequence[torch.Tensor]) -> torch.Tensor:
    """⟨x, y⟩ = Σᵢ sum(xᵢ·yᵢ), accumulated in fp32 whatever the tensors' dtype, as a 0-d tensor."""
    return sum((x.float() * y.float()).sum() for x, y in zip(xs, ys, strict=True))
