"""The loss-spike and loss-divergence rules, shared by the live stability monitor and the study reports.

A logged training loss is a spike when its z-score against the trailing ``window`` logged losses is above
``zscore``: ``z = (loss − mean) / std`` with the sample standard deviation, floored at 0.1 % of the mean
(a rise smaller than that is never a spike, and a perfectly flat history does not divide by zero). Only
finite losses that were not spikes themselves enter the window, so one spike does not hide the next and a
NaN does not poison the window (non-finite losses are the NaN guard's business). No z-score is computed
before the window holds ``window // 2`` losses (at least 2).

Defaults: 16 logged losses and z > 5. llm.c-style windows of ~128 *steps* translate into 13-26 logged points
at the usual ``logging_steps`` of 5-10, and a nano study logs ~50 points, so the window has to be short;
with a 16-point sample std a 3σ threshold flags ordinary noise on long runs, 5σ flags only real jumps.
A run's losses **diverged** (:func:`loss_divergence`) if its final train or eval loss is non-finite, or if
any train loss logged in the last ``late_fraction`` of its steps is non-finite or above the first logged
train loss: the usual "NaN or above the initial loss" rule, applied to the late part of the run so that a
transient excursion the run recovered from counts as a spike, not as a divergence.

Plain Python over logged numbers (no tensors), so the live monitor (:mod:`hf_foco.trainer.stability`) and the
study reports (:mod:`hf_foco.compare.analysis`), which read finished runs' files, apply the very same rule.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Iterable
from typing import Any

DEFAULT_WINDOW = 16
DEFAULT_ZSCORE = 5.0
RELATIVE_STD_FLOOR = 1e-3
DEFAULT_LATE_FRACTION = 0.25


def check_spike_settings(window: int, zscore: float) -> None:
    if not (isinstance(window, int) and window >= 2):
        raise ValueError(f"spike window={window!r}: it must be an integer >= 2 (logged losses per z-score).")
    if not (math.isfinite(zscore) and zscore > 0):
        raise ValueError(f"spike z-score threshold={zscore!r}: it must be a positive number.")


class SpikeDetector:
    """Streaming form of the rule: feed logged losses in order to :meth:`observe`."""

    def __init__(self, window: int = DEFAULT_WINDOW, zscore: float = DEFAULT_ZSCORE,
                 history: Iterable[float] = ()):
        check_spike_settings(window, zscore)
        self.window, self.zscore = window, zscore
        self.history: deque[float] = deque(history, maxlen=window)

    def score(self, loss: float) -> float | None:
        """The z-score of ``loss`` against the window, or None while the window is too short."""
        if len(self.history) < max(2, self.window // 2):
            return None
        mean = statistics.fmean(self.history)
        std = max(statistics.stdev(self.history), RELATIVE_STD_FLOOR * abs(mean), 1e-12)
        return (loss - mean) / std

    def observe(self, loss: float) -> tuple[float | None, bool]:
        """(z-score or None, whether ``loss`` is a spike); a finite non-spike loss joins the window."""
        if not math.isfinite(loss):
            return None, False
        z = self.score(loss)
        spike = z is not None and z > self.zscore
        if not spike:
            self.history.append(loss)
        return z, spike


def spike_indices(losses: Iterable[float], window: int = DEFAULT_WINDOW, zscore: float = DEFAULT_ZSCORE) -> list[int]:
    """Indices of the spikes among ``losses`` (logged in order) under the rule above."""
    detector = SpikeDetector(window, zscore)
    return [i for i, loss in enumerate(losses) if detector.observe(loss)[1]]


def loss_divergence(log_history: Iterable[dict[str, Any]], late_fraction: float = DEFAULT_LATE_FRACTION) -> str | None:
    """Why a Trainer ``log_history`` counts as diverged under the rule above (a short phrase), or None (also
    when no train loss was logged: nothing to judge)."""
    entries = list(log_history)
    train = [(int(e["step"]), float(e["loss"])) for e in entries if e.get("loss") is not None]
    evals = [float(e["eval_loss"]) for e in entries if e.get("eval_loss") is not None]
    if not train:
        return None
    if not math.isfinite(train[-1][1]) or (evals and not math.isfinite(evals[-1])):
        return "non-finite final loss"
    initial, last = train[0][1], train[-1][0]
    for step, loss in train:
        if step >= last - late_fraction * last and not loss <= initial:  # also true for NaN
            return f"loss {loss:.4g} at step {step} above the initial {initial:.4g}"
    return None
