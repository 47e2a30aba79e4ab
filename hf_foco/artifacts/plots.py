"""The loss-curve PNG of a run, drawn from the Trainer's log history."""

from __future__ import annotations

from pathlib import Path


def loss_points(log_history: list[dict]) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    """(step, training loss) and (step, eval loss) pairs from a Trainer log history."""
    train = [(e["step"], e["loss"]) for e in log_history if "loss" in e and "step" in e]
    evals = [(e["step"], e["eval_loss"]) for e in log_history if "eval_loss" in e and "step" in e]
    return train, evals


def plot_loss_curve(log_history: list[dict], path: str | Path, title: str = "") -> Path | None:
    """Write the training (and eval) loss against the step; ``None`` when nothing was logged."""
    train, evals = loss_points(log_history)
    if not train and not evals:
        return None
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4), dpi=100)
    ax = fig.subplots()
    for points, label, style in ((train, "train", "-"), (evals, "eval", "o-")):
        if points:
            ax.plot([s for s, _ in points], [v for _, v in points], style, label=label)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy loss (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    return Path(path)
