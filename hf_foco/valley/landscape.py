"""The narrowing valley of the FOCUS paper (Fig. 2): a 2-D loss whose floor narrows as it deepens.

Landscape (spec: narrowing-valley.md). Rotate p by phi = pi/6 into x (along the valley) and y (across):
``L = a/2 * x^2 y^2 - c x`` with c = 0.1. The across-valley curvature a*x^2 grows as the optimizer
travels, so the floor narrows; L is unbounded below and only weight decay gives a finite optimum. The
gradient is rotated back to the p basis and multiplied coordinatewise by xi ~ N(1, sigma^2) there: the
tilt makes the noise matter to sign methods, which act per p coordinate.
"""

from __future__ import annotations

import math

import torch

PHI = math.pi / 6
COS, SIN = math.cos(PHI), math.sin(PHI)
TILT = 0.1  # c: the slope along the valley floor
INIT_SCALE = 1e-4  # start: p = INIT_SCALE * N(0, I)


def valley_loss(p: torch.Tensor, a: torch.Tensor | float) -> torch.Tensor:
    """L(p) for p of shape (2, ...); ``a`` broadcasts against p[0]."""
    x = COS * p[0] + SIN * p[1]
    y = COS * p[1] - SIN * p[0]
    return 0.5 * a * (x * y) ** 2 - TILT * x


def valley_grad(p: torch.Tensor, a: torch.Tensor | float) -> torch.Tensor:
    """Exact gradient of L in the p basis, shape of p."""
    x = COS * p[0] + SIN * p[1]
    y = COS * p[1] - SIN * p[0]
    axy = a * x * y
    gx = axy * y - TILT
    gy = axy * x
    return torch.stack((COS * gx - SIN * gy, SIN * gx + COS * gy))


def noisy_grad(p, a, sigma, generator: torch.Generator) -> torch.Tensor:
    """Gradient times independent xi ~ N(1, sigma^2) per p coordinate (``sigma`` broadcasts like ``a``)."""
    xi = torch.randn(p.shape, generator=generator, dtype=p.dtype).mul_(sigma).add_(1.0)
    return valley_grad(p, a).mul_(xi)
