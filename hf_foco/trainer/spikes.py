"""The loss-spike rule, one for the live stability monitor and for the study reports.

A logged training loss is a spike when its z-score against the trailing ``window`` logged losses is above
``zscore``: ``z = (loss − mean) / std`` with the sample standard deviation, floored at 0.1 % of the mean
(a rise smaller than that is never a spike, and a perfectly flat history does not divide by zero). Only
finite losses that were not spikes themselves enter the window, so one spike does not hide the next and a
NaN does not poison the window (non-finite losses are the NaN guard's business). No z-score is computed
before the window holds ``window // 2`` losses (at least 2).

Defaults: 16 logged losses and z > 5. llm.c-style windows of ~128 *steps* translate into 13-26 logged points
at the usual ``logging_steps`` of 5-10, and a nano study logs ~50 points, so the window has to be short;
with a 16-point sample std a 3σ threshold flags ordinary noise on long runs, 5σ flags only real jumps.
Pure Python: the study reports import it without torch.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Iterable

DEFAULT_WINDOW = 16
DEFAULT_ZSCORE = 5.0
RELATIVE_STD_FLOOR = 1e-3


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
