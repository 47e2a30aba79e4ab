"""What a sweep leaves: a CSV of every cell, winner maps as PNGs, and the spot-check table beside the spec."""

from __future__ import annotations

import csv
from pathlib import Path

import torch

from .grids import SPEC_SPOT_VALUES, SPOT_OPTIMIZERS, Panel
from .sweep import winners
from .toys import TOY_OPTIMIZERS

COLORS = {"adam": "#4c72b0", "signum": "#55a868", "focus-toy": "#c44e52", "focus": "#dd8452",
          "foco": "#8172b3", "lion": "#937860"}


def summary_rows(panel: Panel, best: dict[str, dict]) -> list[dict]:
    """One CSV row per cell and optimizer: condition, best lr, its mean final loss and stderr, winner."""
    cells, won, rows = panel.cells(), winners(best), []
    for k, winner in enumerate(won):
        for name, b in best.items():
            rows.append(dict(panel=f"sigma_{panel.y}", sigma=cells["sigma"][k].item(), a=cells["a"][k].item(),
                             omega=cells["omega"][k].item(), optimizer=name, best_lr=b["lr"][k].item(),
                             mean_final_loss=b["score"][k].item(), stderr=b["stderr"][k].item(),
                             winner=winner))
    return rows


def write_csv(rows: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def plot_winner_map(panel: Panel, best: dict[str, dict], path: Path, title: str) -> None:
    """Categorical image of the winner per (sigma, y) cell, with a legend of the optimizers."""
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    names = list(best)
    codes = torch.tensor([names.index(w) for w in winners(best)]).reshape(len(panel.ys), len(panel.sigmas))
    log_y = panel.y == "a"
    fig = Figure(figsize=(6.2, 4.2))
    ax = fig.subplots()
    ax.pcolormesh(_edges(panel.sigmas), _edges(panel.ys, log=log_y), codes.numpy(),
                  cmap=ListedColormap([COLORS[n] for n in names]), vmin=-0.5, vmax=len(names) - 0.5)
    if log_y:
        ax.set_yscale("log")
        ax.set_ylabel(f"sharpness a   (weight decay omega = {panel.fixed:g})")
    else:
        ax.set_ylabel(f"weight decay omega   (sharpness a = {panel.fixed:g})")
    ax.set_xlabel("gradient noise sigma")
    ax.set_title(title, fontsize=9)
    ax.legend(handles=[Patch(color=COLORS[n], label=TOY_OPTIMIZERS[n].label) for n in names],
              loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def _edges(centers: list[float], log: bool = False) -> list[float]:
    """Cell edges midway between centers (in log space for a log axis), extended half a step outward."""
    v = torch.tensor(centers, dtype=torch.float64)
    v = v.log() if log else v
    if v.numel() == 1:
        edges = torch.stack((v - 0.5, v + 0.5))
    else:
        mid = (v[1:] + v[:-1]) / 2
        edges = torch.cat((2 * v[:1] - mid[:1], mid, 2 * v[-1:] - mid[-1:]))
    return (edges.exp() if log else edges).tolist()


def spot_check_lines(best: dict[str, dict]) -> list[str]:
    """A table of the spec's spot cells (``best`` from a sweep over exactly those cells, in their order):
    each optimizer's best-lr mean ± stderr and lr, the winner, and the spec's values and winner."""
    names = list(best)
    lines = ["a, omega, sigma | " + " | ".join(f"{n}: mean±se @lr" for n in names)
             + f" | winner | spec ({', '.join(SPOT_OPTIMIZERS)}) | spec winner"]
    won = winners(best)
    for k, (cond, spec) in enumerate(SPEC_SPOT_VALUES.items()):
        cols = [f"{best[n]['score'][k]:.4f}±{best[n]['stderr'][k]:.4f} @{best[n]['lr'][k]:.3g}" for n in names]
        spec_winner = SPOT_OPTIMIZERS[min(range(len(spec)), key=spec.__getitem__)]
        lines.append(f"{cond} | " + " | ".join(cols) + f" | {won[k]} | {spec} | {spec_winner}")
    return lines
