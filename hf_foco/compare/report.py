"""The study's outputs: plots, ``report.md`` (which embeds them) and ``summary.json``, from whatever runs
have finished (a partial study reports what it has and lists the rest as pending).

Plots use one colour per optimizer throughout, log-x for learning rates, and show every seed (same colour),
so seed spread is visible rather than averaged away.
Wall time comes from the ``wall_time_s`` stamps FocoTrainer puts on its logs; for runs made by another
launcher it is the run's ``train_runtime`` spread evenly over its steps (the Trainer's log has no timestamps).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from matplotlib import colormaps
from matplotlib.figure import Figure

from ..rundir import EIGENVALUE_KEY, RESIDUAL_KEY, WALL_TIME_KEY  # noqa: E402
from .analysis import AnalysisConfig, RunLog, last_step, summarize  # noqa: E402


def _colours(optimizers: Sequence[str]) -> dict[str, Any]:
    cmap = colormaps["tab10"]
    return {name: cmap(i % 10) for i, name in enumerate(optimizers)}


def _at_best_lr(runs: Sequence[RunLog], group: dict[str, Any]) -> dict[str, list[RunLog]]:
    chosen: dict[str, list[RunLog]] = {}
    for name, entry in group["optimizers"].items():
        chosen[name] = [r for r in runs if r.optimizer == name and r.learning_rate == entry["best_learning_rate"]]
    return chosen


def _x_axes(run: RunLog, key: str) -> dict[str, list[float]]:
    """Steps, tokens and wall time of the log entries carrying ``key``. Wall time is the stamp that
    FocoTrainer puts on each entry, else the run's runtime spread evenly over its steps."""
    entries = [e for e in run.log_history if e.get(key) is not None]
    steps = [int(e["step"]) for e in entries]
    axes: dict[str, list[float]] = {"step": steps}
    if run.tokens_per_step:
        axes["tokens"] = [s * run.tokens_per_step for s in steps]
    final = last_step(run.log_history)
    if all(WALL_TIME_KEY in e for e in entries):
        axes["wall time (s)"] = [e[WALL_TIME_KEY] for e in entries]
    elif run.runtime_s and final:
        axes["wall time (s)"] = [s * run.runtime_s / final for s in steps]
    return axes


def plot_curves(runs: Sequence[RunLog], group: dict[str, Any], colours: dict[str, Any], path: Path) -> None:
    """Train and eval loss against steps, tokens and wall time, each optimizer at its best LR."""
    chosen = _at_best_lr(runs, group)
    columns = ["step", "tokens", "wall time (s)"]
    fig = Figure(figsize=(15, 8))
    axes = fig.subplots(2, 3, squeeze=False)
    for name, picked in chosen.items():
        for i, run in enumerate(picked):
            for row, key in enumerate(("loss", "eval_loss")):
                values = run.series(key)[1]
                for xlabel, xs in _x_axes(run, key).items():
                    label = f"{name} lr={run.learning_rate:g}" if i == 0 and row == 0 and xlabel == "step" else None
                    axes[row][columns.index(xlabel)].plot(xs, values, color=colours[name], alpha=0.8, label=label,
                                                          marker="o" if key == "eval_loss" else None, ms=3)
    for row, ylabel in enumerate(("train loss", "eval loss")):
        for col, xlabel in enumerate(columns):
            axes[row][col].set(xlabel=xlabel, ylabel=ylabel)
            axes[row][col].grid(alpha=0.3)
    target = group["target_eval_loss"]
    if target is not None:
        for ax in axes[1]:
            ax.axhline(target, color="grey", ls="--", lw=1)
    if any(chosen.values()):
        axes[0][0].legend(fontsize=8)
    fig.suptitle("Loss curves at each optimizer's best learning rate (all seeds; dashed: target)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def plot_lr_sensitivity(rows: Sequence[dict[str, Any]], colours: dict[str, Any], path: Path) -> None:
    """Final eval loss against LR per optimizer; diverged runs as crosses along the top edge."""
    fig = Figure(figsize=(7, 5))
    ax = fig.subplots()
    for name in dict.fromkeys(r["optimizer"] for r in rows):
        own = [r for r in rows if r["optimizer"] == name]
        lrs = sorted({r["learning_rate"] for r in own})
        means = []
        for lr in lrs:
            finite = [r["final_eval_loss"] for r in own if r["learning_rate"] == lr and not r["diverged"]
                      and r["final_eval_loss"] is not None]
            ax.scatter([lr] * len(finite), finite, color=colours[name], s=12, alpha=0.6)
            means.append(sum(finite) / len(finite) if finite else math.nan)
        ax.plot(lrs, means, color=colours[name], marker="o", label=name)
        diverged = [r["learning_rate"] for r in own if r["diverged"]]
        ax.scatter(diverged, [0.97] * len(diverged), marker="x", color=colours[name], s=50,
                   transform=ax.get_xaxis_transform(), clip_on=False)
    ax.set_xscale("log")
    all_lrs = [r["learning_rate"] for r in rows]
    ax.set_xlim(min(all_lrs) / 1.5, max(all_lrs) * 1.5)  # also when every run diverged (no finite point)
    ax.set(xlabel="learning rate", ylabel="final eval loss",
           title="LR sensitivity (line: seed mean; x at top: diverged run)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def plot_sharpness(runs: Sequence[RunLog], group: dict[str, Any], colours: dict[str, Any], path: Path) -> bool:
    """Top Hessian eigenvalue (error bar: its Lanczos residual) beside the LR schedule and the eval loss, per
    optimizer at its best LR; False if none logged it."""
    chosen = _at_best_lr(runs, group)
    if not any(r.series(EIGENVALUE_KEY)[0] for picked in chosen.values() for r in picked):
        return False
    fig = Figure(figsize=(16, 4.5))
    eig_ax, lr_ax, loss_ax = fig.subplots(1, 3)
    for name, picked in chosen.items():
        for i, run in enumerate(picked):
            label = name if i == 0 else None
            entries = [e for e in run.log_history if e.get(EIGENVALUE_KEY) is not None]
            eig_ax.errorbar([e["step"] for e in entries], [e[EIGENVALUE_KEY] for e in entries],
                            yerr=[e.get(RESIDUAL_KEY, 0.0) for e in entries], color=colours[name], marker="o", ms=3,
                            capsize=2, label=label)
            lr_ax.plot(*run.series("learning_rate"), color=colours[name], label=label)
            loss_ax.plot(*run.series("eval_loss"), color=colours[name], marker="o", ms=3, label=label)
    eig_ax.set(xlabel="step", ylabel="top Hessian eigenvalue (fixed eval batch)")
    eig_ax.set_yscale("symlog")
    lr_ax.set(xlabel="step", ylabel="learning rate (schedule)")
    lr_ax.set_yscale("log")
    loss_ax.set(xlabel="step", ylabel="eval loss")
    for ax in (eig_ax, lr_ax, loss_ax):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Is the valley narrowing? Sharpness (bars: Lanczos residual) and the LR schedule at each "
                 "optimizer's best LR")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def _fmt(value: Any, spec: str = ".4g") -> str:
    return "-" if value is None else format(value, spec)


def _fmt_spread(s: dict[str, float] | None, spec: str = ".4g") -> str:
    if s is None:
        return "-"
    text = f"{s['mean']:{spec}} ± {s['std']:{spec}}"
    return text + f" [{s['min']:{spec}}, {s['max']:{spec}}]" if s["n"] > 1 else text


def _lr_text(entry: dict[str, Any]) -> str:
    best = entry["best_learning_rate"]
    if best is None:
        return "-"
    return f"{best:g}" + ("" if entry["bracketed"] or _fixed_lr(entry) else " (edge)")


def _fixed_lr(entry: dict[str, Any]) -> bool:
    """One LR, given (e.g. by learning_rates_from): no grid, so no edge to report."""
    return len(entry["learning_rates"]) == 1


def _stable_text(entry: dict[str, Any]) -> str:
    stable = entry["largest_stable_lr"]
    if stable is None:
        return "none"
    return f"≥ {stable:g}" if stable == max(entry["learning_rates"]) else f"{stable:g}"


def _group_markdown(name: str, group: dict[str, Any], rows: Sequence[dict[str, Any]], images: list[str]) -> list[str]:
    lines = [f"## {name}", ""]
    if group["tokens_per_step"]:
        lines += [f"{group['tokens_per_step']} tokens per step.", ""]
    if group["target_eval_loss"] is None:
        lines += ["No finished, non-diverged AdamW run: no target, so no steps-to-target or speedups.", ""]
    else:
        lines += [f"Target eval loss {group['target_eval_loss']:.4f} (reached by every AdamW seed at its best LR; the "
                  f"last by `{group['reference_run']}`; at step {group['reference_steps']:.1f} on their mean).", ""]
    lines += ["| optimizer | best LR | final eval loss | steps to target | tokens to target | speedup vs AdamW "
              "| missed |", "|---|---|---|---|---|---|---|"]
    for opt, e in group["optimizers"].items():
        lines.append(f"| {opt} | {_lr_text(e)} | {_fmt_spread(e['final_eval_loss'], '.3f')} | "
                     f"{_fmt_spread(e['steps_to_target'], '.0f')} | {_fmt_spread(e['tokens_to_target'], '.3g')} | "
                     f"{_fmt_spread(e['speedup'], '.2f')} | {_fmt(e['missed'], 'd')} |")
    unbracketed = [opt for opt, e in group["optimizers"].items()
                   if e["best_learning_rate"] and not e["bracketed"] and not _fixed_lr(e)]
    if unbracketed:
        lines += ["", f"Unbracketed optimum (best LR at the edge of the grid, extensions used up or pending): "
                  f"{', '.join(unbracketed)}. Their numbers may improve with a wider grid."]
    lines += ["", "Learning rates and stability over every learning rate and seed:", "",
              "| optimizer | LRs | LR sensitivity | largest stable LR | diverged / runs | loss spikes | largest grad norm "
              "| NaN-guard skips |", "|---|---|---|---|---|---|---|---|"]
    for opt, e in group["optimizers"].items():
        lrs = ", ".join(f"{lr:g}" for lr in e["learning_rates"])
        lines.append(f"| {opt} | {lrs} | {_fmt(e['lr_sensitivity'], '.3f')} | {_stable_text(e)} | {e['diverged']} / "
                     f"{e['runs']} | {e['loss_spikes']} | {_fmt(e['max_grad_norm'])} | {e['nan_guard_skips']} |")
    diverged = [r for r in rows if r["diverged"]]
    if diverged:
        lines += ["", "Diverged runs:", ""] + [f"- `{r['name']}`: {r['divergence_reason']}" for r in diverged]
    lines += [""] + [f"![{image}](plots/{image})" for image in images] + [""]
    return lines


def _across_groups_markdown(groups: dict[str, Any]) -> list[str]:
    """Each optimizer's seed-mean final eval loss minus AdamW's, at each one's best LR, per group: how an
    advantage moves with the batch size (gradient noise) at an equal token budget."""
    names = list(groups)
    lines = ["## Across groups", "", "Final eval loss minus AdamW's (seed means, each at its best LR; negative: "
             "better than AdamW), and tokens to the group's own target (the loss every AdamW seed reaches at its "
             "best LR):", "",
             "| optimizer | " + " | ".join(f"{g} Δloss | {g} tokens to target" for g in names) + " |",
             "|---|" + "---|---|" * len(names)]
    optimizers = dict.fromkeys(opt for g in groups.values() for opt in g["optimizers"])
    for opt in optimizers:
        cells = []
        for group in groups.values():
            own, ref = group["optimizers"].get(opt), group["optimizers"].get("adamw")
            gap = (own["final_eval_loss"]["mean"] - ref["final_eval_loss"]["mean"]
                   if own and ref and own["final_eval_loss"] and ref["final_eval_loss"] else None)
            tokens = own and own["tokens_to_target"]
            cells += [_fmt(gap, "+.3f"), _fmt(tokens["mean"], ".3g") if tokens else "-"]
        lines.append(f"| {opt} | " + " | ".join(cells) + " |")
    return lines + [""]


def _finite_or_null(value: Any) -> Any:
    """NaN/inf as null, so ``summary.json`` is strict JSON (the divergence reason keeps the story)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_null(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite_or_null(v) for v in value]
    return value


def write_report(study_name: str, runs: Sequence[RunLog], output_dir: Path, optimizers: Sequence[str],
                 config: AnalysisConfig, pending: Sequence[str] = ()) -> dict[str, Any]:
    """Write ``plots/*.png``, ``report.md`` and ``summary.json`` under ``output_dir``; returns the summary."""
    output_dir = Path(output_dir)
    plots = output_dir / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    summary = {"study": study_name, "analysis": asdict(config), **summarize(runs, config), "pending": list(pending)}
    colours = _colours(optimizers)
    lines = [f"# Study `{study_name}`", "",
             f"{len(runs)} runs analysed ({sum(r.crashed for r in runs)} crashed), {len(pending)} not run yet"
             + (": a partial report." if pending else "."), "", "Definitions:", "",
             "- **Diverged**: crashed, ended with a non-finite loss, or logged a train loss above its first one in "
             f"the last {config.late_fraction:.0%} of its steps (the stability monitor's rule, "
             "`hf_foco.spikes`). **Loss spike**: a logged train loss with a z-score > "
             f"{config.spike_zscore:g} against the {config.spike_window} logged losses before it (the same rule "
             "as the monitor).",
             "- **Best LR**: the lowest final eval loss, averaged over the seeds that ran at every LR of the grid, "
             "among the LRs where no seed diverged (seeds added at the best LR only do not move it); *(edge)* "
             "when it is the smallest or largest LR of a grid of several (unbracketed: the optimum may lie beyond); "
             "an optimizer run at one given LR has no grid and no mark.",
             "- **Final eval loss**: mean ± sample std [min, max] over seeds at the best LR.",
             "- **Target**: the loss AdamW reaches on every seed at its best LR (the highest of those seeds' final "
             "eval losses). **Steps/tokens to target**: where the eval loss "
             "first reaches it, interpolated linearly between the two evaluations that straddle it (tokens = "
             "steps × tokens per step). **Speedup** = AdamW's mean steps to it (its best-LR seeds) / the "
             "optimizer's, per seed at its best LR; a miss counts as 1.0 and in *missed*.",
             "- **LR sensitivity** (Wortsman et al. 2023): the mean over the grid's LRs of min(final eval loss, "
             "initial loss) − the best such value (seed means; a run without a finite loss counts as the initial "
             "loss, the eval loss at step 0). Lower is more forgiving; it depends on the grid's span.",
             "- **Largest stable LR**: the largest grid LR at which no seed diverged (≥: the top of the grid, "
             "nothing diverged).",
             "- **Wall time** in the curves: each log entry's wall-clock stamp, else the run's train_runtime "
             "spread evenly over its steps.", ""]
    for group_name, group in summary["groups"].items():
        group_runs = [r for r in runs if r.group == group_name]
        group_rows = [r for r in summary["runs"] if r["group"] == group_name]
        images = [f"curves-{group_name}.png", f"lr-{group_name}.png"]
        plot_curves(group_runs, group, colours, plots / images[0])
        plot_lr_sensitivity(group_rows, colours, plots / images[1])
        if plot_sharpness(group_runs, group, colours, plots / f"sharpness-{group_name}.png"):
            images.append(f"sharpness-{group_name}.png")
        lines += _group_markdown(group_name, group, group_rows, images)
    if len(summary["groups"]) > 1:
        lines += _across_groups_markdown(summary["groups"])
    if pending:
        lines += ["## Pending runs", ""] + [f"- `{name}`" for name in pending] + [""]
    (output_dir / "report.md").write_text("\n".join(lines))
    (output_dir / "summary.json").write_text(json.dumps(_finite_or_null(summary), indent=2, allow_nan=False))
    return summary
