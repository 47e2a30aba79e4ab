"""The grids of the sweep: phase-diagram panels over (sigma, a) and (sigma, omega), named resolutions, and
the spec's spot cells with their independently measured values.
"""

from __future__ import annotations

import dataclasses

import torch

from .sweep import make_cells


@dataclasses.dataclass
class Panel:
    """One phase diagram: sigma on x, ``y`` ("a" with omega = ``fixed``, or "omega" with a = ``fixed``)."""

    y: str
    sigmas: list[float]
    ys: list[float]
    fixed: float

    def cells(self) -> dict[str, torch.Tensor]:
        """Flat cells, y-major: cell k is (ys[k // n_sigma], sigmas[k % n_sigma])."""
        ys, sigmas = (torch.tensor(v, dtype=torch.float64) for v in (self.ys, self.sigmas))
        y, s = torch.meshgrid(ys, sigmas, indexing="ij")
        return make_cells(y, self.fixed, s) if self.y == "a" else make_cells(self.fixed, y, s)


def make_panel(y: str, n_sigma: int, n_y: int) -> Panel:
    """The spec's axes at the given resolution: sigma in [0, 3]; a in logspace(-1, 3) at omega = 0.1
    (Fig. 2a) or omega in [0, 0.5] at a = 10 (Fig. 2b)."""
    if n_sigma < 1 or n_y < 1:
        raise ValueError(f"grid sizes must be positive, got n_sigma={n_sigma}, n_{y}={n_y}")
    if y == "a":
        a = torch.logspace(-1, 3, n_y, dtype=torch.float64).tolist()
        return Panel("a", _linspace(0, 3, n_sigma), a, 0.1)
    if y == "omega":
        return Panel("omega", _linspace(0, 3, n_sigma), _linspace(0, 0.5, n_y), 10.0)
    raise ValueError(f"panel y axis must be 'a' or 'omega', got {y!r}")


def _linspace(start: float, end: float, n: int) -> list[float]:
    return torch.linspace(start, end, n, dtype=torch.float64).tolist()


# The spec's table: (a, omega, sigma) -> best-lr mean final loss of adam, signum, the toy FOCUS (50 replicates).
SPEC_SPOT_VALUES = {
    (10.0, 0.1, 0.0): (-0.650, -0.475, -0.463),
    (10.0, 0.1, 2.0): (-0.211, -0.241, -0.237),
    (10.0, 0.1, 3.0): (-0.158, -0.187, -0.194),
    (0.1, 0.1, 2.5): (-0.397, -0.674, -0.640),
    (1000.0, 0.1, 1.0): (-0.095, -0.080, -0.077),
    (1000.0, 0.1, 3.0): (-0.0450, -0.0462, -0.0464),
}
SPOT_OPTIMIZERS = ("adam", "signum", "focus-toy")


# name: (n_sigma, n_a, n_omega, n_lr, replicates, steps). "spec" is the paper's grid; "default" the
# reduction that fits 15 min on 2 cores; "quick" a smoke test.
GRIDS = {
    "spec": (100, 96, 96, 20, 50, 1000),
    "default": (61, 49, 51, 20, 40, 1000),
    "quick": (7, 5, 5, 8, 8, 300),
}
