"""Hyperparameter checks shared by every hf_foco optimizer.

Each check names the bad value, the valid range and the parameter, so a typo in a recipe fails at
construction time instead of producing a silently wrong run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def _finite(name: str, value) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}.")
    return value


def check_lr(lr) -> None:
    if _finite("lr", lr) < 0:
        raise ValueError(f"Invalid learning rate lr={lr!r}: it must be >= 0.")


def check_weight_decay(weight_decay) -> None:
    if _finite("weight_decay", weight_decay) < 0:
        raise ValueError(f"Invalid weight_decay={weight_decay!r}: it must be >= 0.")


def check_unit_interval(name: str, value) -> None:
    """Momentum-like coefficients and FOCUS's gamma live in [0, 1)."""
    value_f = _finite(name, value)
    if not 0.0 <= value_f < 1.0:
        raise ValueError(f"Invalid {name}={value!r}: it must be in [0, 1).")


def check_betas(betas: Sequence[float], count: int = 2) -> None:
    if not isinstance(betas, (tuple, list)) or len(betas) != count:
        raise ValueError(f"Invalid betas={betas!r}: expected a tuple of {count} numbers in [0, 1).")
    for i, beta in enumerate(betas):
        check_unit_interval(f"betas[{i}]", beta)


def check_choice(name: str, value, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"Invalid {name}={value!r}: choose one of {', '.join(map(repr, choices))}.")


def check_fused_or_foreach(optimizer: str, fused, foreach) -> None:
    if fused and foreach:
        raise ValueError(f"{optimizer}: choose fused=True or foreach=True, not both.")
