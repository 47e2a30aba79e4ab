"""Pure arithmetic over finished runs' logs: divergence, loss spikes, steps-to-target and speedups.

Everything here works on plain data (a Trainer ``log_history`` list and a ``stability.json`` dict), so the
rules can be checked on hand-made logs, independent of how the runs were produced. The rules:

* **Divergence.** A run diverged if it crashed, if its final train or eval loss is non-finite, or if any
  train loss logged in the last ``late_fraction`` of its steps is non-finite or above the first logged
  train loss (the usual "NaN or above the initial loss" rule, applied to the late part of the run so that
  a transient spike the run recovered from is counted as a spike, not as a divergence).
* **Loss spikes.** The stability monitor's rule (:mod:`hf_foco.trainer.spikes`), applied to the logged
  train losses: a z-score above ``spike_zscore`` against the trailing ``spike_window`` logged losses.
* **Steps to target.** The first logged eval step whose eval loss is at or below the target (no
  interpolation between evals). The target of a comparison group is the final eval loss of its best AdamW
  run; speedup = the AdamW reference run's steps to target / the optimizer's steps to target, per seed of
  the optimizer at its best learning rate. A run that misses the target counts as no speedup (1.0) and is
  counted in ``missed``.
* **Best learning rate.** The LR with the lowest mean final eval loss over seeds, among the LRs where no
  seed diverged.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..trainer.spikes import DEFAULT_WINDOW, DEFAULT_ZSCORE, check_spike_settings, spike_indices

REFERENCE_OPTIMIZER = "adamw"


@dataclass(frozen=True)
class AnalysisConfig:
    """Knobs of the rules above; a study sets them under ``analysis:``."""

    spike_window: int = DEFAULT_WINDOW
    spike_zscore: float = DEFAULT_ZSCORE
    late_fraction: float = 0.25

    def __post_init__(self):
        check_spike_settings(self.spike_window, self.spike_zscore)
        if not 0 < self.late_fraction <= 1:
            raise ValueError(f"analysis.late_fraction must be in (0, 1], got {self.late_fraction}.")


@dataclass
class RunLog:
    """One run of a study as the analysis sees it: where it sits in the grid, and what it logged."""

    name: str
    group: str
    optimizer: str
    learning_rate: float
    seed: int
    crashed: bool = False
    log_history: list[dict[str, Any]] = field(default_factory=list)
    stability: dict[str, Any] = field(default_factory=dict)
    tokens_per_step: int | None = None
    runtime_s: float | None = None

    def series(self, key: str) -> tuple[list[int], list[float]]:
        return series(self.log_history, key)


def series(log_history: Iterable[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of every log entry that carries ``key`` (``loss`` is train loss, ``eval_loss`` eval)."""
    steps, values = [], []
    for entry in log_history:
        if key in entry and entry[key] is not None:
            steps.append(int(entry["step"]))
            values.append(float(entry[key]))
    return steps, values


def last_step(log_history: Sequence[dict[str, Any]]) -> int:
    return max((int(entry.get("step", 0)) for entry in log_history), default=0)


def train_runtime(log_history: Sequence[dict[str, Any]]) -> float | None:
    """The Trainer's ``train_runtime`` (seconds) from the summary entry that ``train()`` logs at the end."""
    values = series(log_history, "train_runtime")[1]
    return values[-1] if values else None


def final_value(log_history: Sequence[dict[str, Any]], key: str) -> float | None:
    values = series(log_history, key)[1]
    return values[-1] if values else None


def divergence_reason(run: RunLog, late_fraction: float = AnalysisConfig.late_fraction) -> str | None:
    """Why the run counts as diverged (a short phrase), or None if it did not."""
    if run.crashed:
        return "crashed"
    steps, losses = run.series("loss")
    if not losses:
        return "no train loss logged"
    final_eval = final_value(run.log_history, "eval_loss")
    if not math.isfinite(losses[-1]) or (final_eval is not None and not math.isfinite(final_eval)):
        return "non-finite final loss"
    initial = losses[0]
    late_start = steps[-1] - late_fraction * steps[-1]
    for step, loss in zip(steps, losses):
        if step >= late_start and not loss <= initial:  # also true for NaN
            return f"loss {loss:.4g} at step {step} above the initial {initial:.4g}"
    return None


def max_grad_norm(log_history: Sequence[dict[str, Any]]) -> float | None:
    """The largest finite logged gradient norm (pre-clipping, as the Trainer logs it)."""
    finite = [g for g in series(log_history, "grad_norm")[1] if math.isfinite(g)]
    return max(finite) if finite else None


def nan_guard_skips(stability: dict[str, Any]) -> int:
    """Optimizer steps the stability monitor's NaN guard skipped, from its ``stability.json``:
    ``num_skipped_steps``, else the length of the ``skipped_steps`` list, else 0 (no monitor ran)."""
    count = stability.get("num_skipped_steps")
    if isinstance(count, int) and not isinstance(count, bool):
        return count
    skipped = stability.get("skipped_steps")
    return len(skipped) if isinstance(skipped, list) else 0


def steps_to_target(log_history: Sequence[dict[str, Any]], target: float) -> int | None:
    """First eval step whose eval loss is at or below ``target``; None if the run never reaches it."""
    for step, loss in zip(*series(log_history, "eval_loss")):
        if loss <= target:
            return step
    return None


def spread(values: Sequence[float]) -> dict[str, float] | None:
    """Mean, sample std (0 for one value), min, max and count of ``values``; None when empty."""
    if not values:
        return None
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values), "n": len(values)}


def analyse_run(run: RunLog, config: AnalysisConfig = AnalysisConfig()) -> dict[str, Any]:
    """The per-run row of ``summary.json``."""
    losses = run.series("loss")[1]
    reason = divergence_reason(run, config.late_fraction)
    return {
        "name": run.name, "group": run.group, "optimizer": run.optimizer,
        "learning_rate": run.learning_rate, "seed": run.seed, "crashed": run.crashed,
        "diverged": reason is not None, "divergence_reason": reason,
        "steps": last_step(run.log_history), "tokens_per_step": run.tokens_per_step,
        "initial_train_loss": losses[0] if losses else None,
        "final_train_loss": losses[-1] if losses else None,
        "final_eval_loss": final_value(run.log_history, "eval_loss"),
        "loss_spikes": len(spike_indices(losses, config.spike_window, config.spike_zscore)),
        "max_grad_norm": max_grad_norm(run.log_history),
        "nan_guard_skips": nan_guard_skips(run.stability),
        "runtime_s": run.runtime_s,
    }


def best_learning_rate(rows: Sequence[dict[str, Any]]) -> float | None:
    """Among one optimizer's rows, the LR with the lowest mean final eval loss where no seed diverged."""
    by_lr: dict[float, list[dict[str, Any]]] = {}
    for row in rows:
        by_lr.setdefault(row["learning_rate"], []).append(row)
    eligible = {lr: statistics.fmean(r["final_eval_loss"] for r in runs) for lr, runs in by_lr.items()
                if all(not r["diverged"] and r["final_eval_loss"] is not None for r in runs)}
    return min(eligible, key=eligible.get) if eligible else None


def compare_group(rows: Sequence[dict[str, Any]], histories: dict[str, Sequence[dict[str, Any]]]) -> dict[str, Any]:
    """Target, per-optimizer best LR, stability counts and speedups of one comparison group.

    ``rows`` are ``analyse_run`` rows of one group; ``histories`` maps run name -> log_history. Also fills
    each row's ``steps_to_target`` once the group's target is known.
    """
    finite_adamw = [r for r in rows if r["optimizer"] == REFERENCE_OPTIMIZER and not r["diverged"]
                    and r["final_eval_loss"] is not None]
    reference = min(finite_adamw, key=lambda r: r["final_eval_loss"], default=None)
    target = reference["final_eval_loss"] if reference else None
    reference_steps = steps_to_target(histories[reference["name"]], target) if reference else None
    for row in rows:
        row["steps_to_target"] = (steps_to_target(histories[row["name"]], target)
                                  if target is not None and not row["diverged"] else None)
    optimizers: dict[str, Any] = {}
    for name in dict.fromkeys(r["optimizer"] for r in rows):
        own = [r for r in rows if r["optimizer"] == name]
        best = best_learning_rate(own)
        at_best = [r for r in own if r["learning_rate"] == best]
        grad_norms = [r["max_grad_norm"] for r in own if r["max_grad_norm"] is not None]
        entry = {
            "best_learning_rate": best,
            "runs": len(own), "diverged": sum(r["diverged"] for r in own),
            "loss_spikes": sum(r["loss_spikes"] for r in own),
            "max_grad_norm": max(grad_norms) if grad_norms else None,
            "nan_guard_skips": sum(r["nan_guard_skips"] for r in own),
            "final_eval_loss": spread([r["final_eval_loss"] for r in at_best]),
            "steps_to_target": None, "speedup": None, "missed": None,
        }
        if reference_steps is not None and at_best:
            reached = [r["steps_to_target"] for r in at_best if r["steps_to_target"] is not None]
            entry["steps_to_target"] = spread(reached)
            entry["speedup"] = spread([reference_steps / max(r["steps_to_target"], 1)
                                       if r["steps_to_target"] is not None else 1.0 for r in at_best])
            entry["missed"] = len(at_best) - len(reached)
        optimizers[name] = entry
    return {"target_eval_loss": target, "reference_run": reference["name"] if reference else None,
            "reference_steps": reference_steps, "optimizers": optimizers}


def summarize(runs: Sequence[RunLog], config: AnalysisConfig = AnalysisConfig()) -> dict[str, Any]:
    """``summary.json`` minus the study header: per-run rows and per-group comparisons."""
    rows = [analyse_run(run, config) for run in runs]
    histories = {run.name: run.log_history for run in runs}
    groups = {group: compare_group([r for r in rows if r["group"] == group], histories)
              for group in dict.fromkeys(r["group"] for r in rows)}
    return {"runs": rows, "groups": groups}
