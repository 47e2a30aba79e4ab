"""Pure arithmetic over finished runs' logs: divergence, spikes, steps to target, LR sensitivity, grid edges.

Everything here works on plain data (a Trainer ``log_history`` list and a ``stability.json`` dict), so the
rules can be checked on hand-made logs, independent of how the runs were produced. The rules:

* **Divergence and loss spikes.** The stability monitor's rules (:mod:`hf_foco.spikes`), on the
  logged losses: a run diverged if it crashed, ended with a non-finite loss, or logged a train loss above its
  first one in the last ``late_fraction`` of its steps; a spike is a z-score above ``spike_zscore`` against
  the trailing ``spike_window`` logged losses.
* **Initial loss** ℓ₀: the eval loss at step 0 (``eval_on_start``), else the first logged train loss.
* **Selection seeds.** The seeds that ran at every LR of an optimizer's grid (all its seeds when no seed
  did). Seeds added at one LR only (more seeds at the best LR) do not take part in choosing it: means over
  different seed sets would compare seeds as well as LRs, and the added seeds stay held out from the choice.
* **Best learning rate.** The LR with the lowest final eval loss averaged over the selection seeds, among
  the LRs where no seed (of any) diverged. It is **bracketed** when it is neither the smallest nor the
  largest LR of the grid. Its summary numbers (final loss, steps to target) use every seed run there.
* **Grid extension.** While the best LR sits at an edge of the grid, one more LR beyond that edge, at the
  ratio of the two outermost LRs there (the grid's log spacing); when every LR diverged, one below the
  smallest. A best LR below a diverged one is bracketed by the divergence: no extension.
* **Steps to target.** The target of a comparison group is the loss AdamW reaches on every seed at its best
  LR: the highest final eval loss among those seeds (one lucky seed at another LR would be a target that
  AdamW itself, tuned, misses). A run's steps to target interpolate linearly between the last eval above the
  target and the first at or below it; tokens to target = steps x tokens per step. Speedup = AdamW's steps
  (the mean over its best-LR seeds) / the optimizer's, per seed at its best LR; a run that misses the target
  counts as no speedup (1.0) and in ``missed``.
* **LR sensitivity** (Wortsman et al. 2023, "Small-scale proxies for large-scale Transformer training
  instabilities"): the mean over the grid's LRs of min(final eval loss, ℓ₀) − the best of those values
  (means over the selection seeds; a run without a finite final loss counts as ℓ₀). 0 means every LR of the grid is as good as
  the best; it grows with the grid's span, so compare optimizers on grids of equal span.
* **Largest stable LR.** The largest grid LR at which no seed diverged (a lower bound when it is the top of
  the grid).
* **Sharpness.** The top Hessian eigenvalue at each step it was measured (runs with
  ``hessian_every_n_steps``): per run in its row, and the seed mean at the best LR per optimizer, so the
  summary alone carries what the sharpness claim compares seed by seed.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..rundir import EIGENVALUE_KEY
from ..spikes import (
    DEFAULT_LATE_FRACTION,
    DEFAULT_WINDOW,
    DEFAULT_ZSCORE,
    check_spike_settings,
    loss_divergence,
    spike_indices,
)

REFERENCE_OPTIMIZER = "adamw"


@dataclass(frozen=True)
class AnalysisConfig:
    """Knobs of the rules above; a study sets them under ``analysis:``."""

    spike_window: int = DEFAULT_WINDOW
    spike_zscore: float = DEFAULT_ZSCORE
    late_fraction: float = DEFAULT_LATE_FRACTION

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


def divergence_reason(run: RunLog, late_fraction: float = DEFAULT_LATE_FRACTION) -> str | None:
    """Why the run counts as diverged (a short phrase), or None if it did not. A run that logged no train loss
    cannot be judged, and counts as diverged."""
    if run.crashed:
        return "crashed"
    if not run.series("loss")[1]:
        return "no train loss logged"
    return loss_divergence(run.log_history, late_fraction)


def initial_loss(log_history: Sequence[dict[str, Any]]) -> float | None:
    """ℓ₀: the eval loss logged at step 0, else the first logged train loss."""
    at_start = [loss for step, loss in zip(*series(log_history, "eval_loss")) if step == 0]
    return at_start[0] if at_start else next(iter(series(log_history, "loss")[1]), None)


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


def steps_to_target(log_history: Sequence[dict[str, Any]], target: float) -> float | None:
    """The step where the eval loss first reaches ``target``, linear between the two evals that straddle
    it (the first eval if that one is already at or below it); None if the run never reaches it."""
    previous = None
    for step, loss in zip(*series(log_history, "eval_loss")):
        if loss <= target:
            if previous is None:
                return float(step)
            (step0, loss0) = previous
            return step0 + (step - step0) * (loss0 - target) / (loss0 - loss)
        previous = (step, loss) if math.isfinite(loss) else None
    return None


def spread(values: Sequence[float]) -> dict[str, float] | None:
    """Mean, sample std (0 for one value), min, max and count of ``values``; None when empty."""
    if not values:
        return None
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values), "n": len(values)}


def analyse_run(run: RunLog, config: AnalysisConfig = AnalysisConfig()) -> dict[str, Any]:
    """The per-run row of ``summary.json`` (``steps_to_target`` and ``tokens_to_target`` come with the group)."""
    losses = run.series("loss")[1]
    reason = divergence_reason(run, config.late_fraction)
    return {
        "name": run.name, "group": run.group, "optimizer": run.optimizer,
        "learning_rate": run.learning_rate, "seed": run.seed, "crashed": run.crashed,
        "diverged": reason is not None, "divergence_reason": reason,
        "steps": last_step(run.log_history), "tokens_per_step": run.tokens_per_step,
        "initial_loss": initial_loss(run.log_history),
        "final_train_loss": losses[-1] if losses else None,
        "final_eval_loss": final_value(run.log_history, "eval_loss"),
        "loss_spikes": len(spike_indices(losses, config.spike_window, config.spike_zscore)),
        "max_grad_norm": max_grad_norm(run.log_history),
        "nan_guard_skips": nan_guard_skips(run.stability),
        "runtime_s": run.runtime_s,
        "top_hessian_eigenvalue": [list(point) for point in zip(*run.series(EIGENVALUE_KEY))],
    }


def seed_mean_series(histories: Iterable[Sequence[dict[str, Any]]], key: str) -> list[list[float]]:
    """[[step, mean over the runs that logged ``key`` at that step], ...] in step order."""
    by_step: dict[int, list[float]] = {}
    for history in histories:
        for step, value in zip(*series(history, key)):
            by_step.setdefault(step, []).append(value)
    return [[step, statistics.fmean(values)] for step, values in sorted(by_step.items())]


def _by_lr(rows: Sequence[dict[str, Any]]) -> dict[float, list[dict[str, Any]]]:
    by_lr: dict[float, list[dict[str, Any]]] = {}
    for row in sorted(rows, key=lambda r: r["learning_rate"]):
        by_lr.setdefault(row["learning_rate"], []).append(row)
    return by_lr


def _stable(runs: Sequence[dict[str, Any]]) -> bool:
    return all(not r["diverged"] and r["final_eval_loss"] is not None for r in runs)


def selection_seeds(rows: Sequence[dict[str, Any]]) -> list[int]:
    """The seeds that one optimizer's rows ran at every LR of its grid; all its seeds when none did."""
    seeds_per_lr = [{r["seed"] for r in runs} for runs in _by_lr(rows).values()]
    common = set.intersection(*seeds_per_lr) if seeds_per_lr else set()
    return sorted(common or {r["seed"] for r in rows})


def best_learning_rate(rows: Sequence[dict[str, Any]]) -> float | None:
    """Among one optimizer's rows, the LR with the lowest final eval loss averaged over the selection seeds,
    where no seed diverged."""
    chosen = set(selection_seeds(rows))
    eligible = {lr: statistics.fmean(r["final_eval_loss"] for r in runs if r["seed"] in chosen)
                for lr, runs in _by_lr(rows).items() if _stable(runs)}
    return min(eligible, key=eligible.get) if eligible else None


def is_bracketed(best: float | None, learning_rates: Iterable[float]) -> bool:
    lrs = sorted(learning_rates)
    return best is not None and lrs[0] < best < lrs[-1]


def grid_extension(rows: Sequence[dict[str, Any]]) -> float | None:
    """The next LR to try for one optimizer whose whole grid has run (rule above), or None when bracketed.
    Rounded to 4 significant digits, so run names stay short. Needs two LRs (the spacing)."""
    lrs = sorted({r["learning_rate"] for r in rows})
    if len(lrs) < 2:
        raise ValueError("grid extension needs at least two learning rates (their ratio is the step).")
    best = best_learning_rate(rows)
    if best is None or best == lrs[0]:
        return float(f"{lrs[0] * lrs[0] / lrs[1]:.4g}")
    if best == lrs[-1]:
        return float(f"{lrs[-1] * lrs[-1] / lrs[-2]:.4g}")
    return None


def lr_sensitivity(rows: Sequence[dict[str, Any]]) -> float | None:
    """Wortsman et al.'s LR sensitivity of one optimizer's rows (rule above); None without an initial loss."""
    chosen = set(selection_seeds(rows))
    capped = {}
    for lr, runs in _by_lr([r for r in rows if r["seed"] in chosen]).items():
        values = []
        for r in runs:
            if r["initial_loss"] is None:
                return None
            final = r["final_eval_loss"]
            ok = final is not None and math.isfinite(final)
            values.append(min(final, r["initial_loss"]) if ok else r["initial_loss"])
        capped[lr] = statistics.fmean(values)
    if not capped:
        return None
    best = min(capped.values())
    return statistics.fmean(v - best for v in capped.values())


def largest_stable_lr(rows: Sequence[dict[str, Any]]) -> float | None:
    """The largest LR at which no seed diverged; None if every LR diverged."""
    return max((lr for lr, runs in _by_lr(rows).items() if _stable(runs)), default=None)


def compare_group(rows: Sequence[dict[str, Any]], histories: dict[str, Sequence[dict[str, Any]]]) -> dict[str, Any]:
    """Target, per-optimizer best LR, sensitivity, stability and speedups of one comparison group.

    ``rows`` are ``analyse_run`` rows of one group; ``histories`` maps run name -> log_history. Also fills
    each row's ``steps_to_target`` and ``tokens_to_target`` once the group's target is known.
    """
    # The target is the loss AdamW reaches on every seed at its best LR (the worst of those seeds' final
    # losses), so each of AdamW's own seeds reaches it and the reference is their mean steps, not one lucky seed.
    adamw = [r for r in rows if r["optimizer"] == REFERENCE_OPTIMIZER]
    adamw_best = best_learning_rate(adamw)
    tuned = [r for r in adamw if r["learning_rate"] == adamw_best]
    reference = max(tuned, key=lambda r: r["final_eval_loss"], default=None)
    target = reference["final_eval_loss"] if reference else None
    reference_steps = (statistics.fmean(steps_to_target(histories[r["name"]], target) for r in tuned)
                       if reference else None)
    for row in rows:
        steps = (steps_to_target(histories[row["name"]], target)
                 if target is not None and not row["diverged"] else None)
        row["steps_to_target"] = steps
        row["tokens_to_target"] = steps * row["tokens_per_step"] if steps is not None and row["tokens_per_step"] \
            else None
    optimizers: dict[str, Any] = {}
    for name in dict.fromkeys(r["optimizer"] for r in rows):
        own = [r for r in rows if r["optimizer"] == name]
        lrs = sorted({r["learning_rate"] for r in own})
        best = best_learning_rate(own)
        at_best = [r for r in own if r["learning_rate"] == best]
        grad_norms = [r["max_grad_norm"] for r in own if r["max_grad_norm"] is not None]
        entry = {
            "learning_rates": lrs, "best_learning_rate": best, "bracketed": is_bracketed(best, lrs),
            "selection_seeds": selection_seeds(own), "seeds_at_best_lr": sorted(r["seed"] for r in at_best),
            "lr_sensitivity": lr_sensitivity(own), "largest_stable_lr": largest_stable_lr(own),
            "runs": len(own), "diverged": sum(r["diverged"] for r in own),
            "loss_spikes": sum(r["loss_spikes"] for r in own),
            "max_grad_norm": max(grad_norms) if grad_norms else None,
            "nan_guard_skips": sum(r["nan_guard_skips"] for r in own),
            "final_eval_loss": spread([r["final_eval_loss"] for r in at_best]),
            "steps_to_target": None, "tokens_to_target": None, "speedup": None, "missed": None,
            EIGENVALUE_KEY: seed_mean_series((histories[r["name"]] for r in at_best), EIGENVALUE_KEY),
        }
        if reference_steps is not None and at_best:
            reached = [r for r in at_best if r["steps_to_target"] is not None]
            entry["steps_to_target"] = spread([r["steps_to_target"] for r in reached])
            entry["tokens_to_target"] = spread([r["tokens_to_target"] for r in reached
                                                if r["tokens_to_target"] is not None])
            entry["speedup"] = spread([reference_steps / max(r["steps_to_target"], 1)
                                       if r["steps_to_target"] is not None else 1.0 for r in at_best])
            entry["missed"] = len(at_best) - len(reached)
        optimizers[name] = entry
    tokens = {r["tokens_per_step"] for r in rows}
    return {"tokens_per_step": tokens.pop() if len(tokens) == 1 else None,
            "target_eval_loss": target, "reference_run": reference["name"] if reference else None,
            "reference_steps": reference_steps, "optimizers": optimizers}


def summarize(runs: Sequence[RunLog], config: AnalysisConfig = AnalysisConfig()) -> dict[str, Any]:
    """``summary.json`` minus the study header: per-run rows and per-group comparisons."""
    rows = [analyse_run(run, config) for run in runs]
    histories = {run.name: run.log_history for run in runs}
    groups = {group: compare_group([r for r in rows if r["group"] == group], histories)
              for group in dict.fromkeys(r["group"] for r in rows)}
    return {"runs": rows, "groups": groups}
