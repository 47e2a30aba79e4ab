"""``hf-foco valley``: from the grid settings to the winner maps and the CSV, or the spot-check table.

The grid sizes come from a named resolution (:data:`.grids.GRIDS`), each axis overridable; the learning rates
are ``n_lr`` points log-spaced over [1e-3, 1]. A panel sweeps every optimizer at every learning rate on every
cell and keeps each optimizer's best learning rate per cell (:mod:`.sweep`), then draws the winner map and
adds its rows to ``valley.csv`` (:mod:`.report`). The spot check runs only the spec's table cells, at the
spec's resolution unless overridden, and prints them beside the spec's values.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import torch

from ..rundir import unwritable_dir
from .grids import GRIDS, SPEC_SPOT_VALUES, SPOT_OPTIMIZERS, make_panel
from .report import plot_winner_map, spot_check_lines, summary_rows, write_csv
from .sweep import best_over_lr, make_cells, sweep


def run_valley(output_dir: str | Path, *, preset: str = "default", n_sigma: int | None = None, n_a: int | None = None,
               n_omega: int | None = None, n_lr: int | None = None, replicates: int | None = None,
               steps: int | None = None, panels: Sequence[str] = ("a", "omega"),
               optimizers: Sequence[str] = SPOT_OPTIMIZERS, seed: int = 0, workers: int = 1,
               spot_check: bool = False) -> None:
    """Run the panels (or the spot check) and write their outputs into ``output_dir``, printing progress.

    Sizes left at None come from ``preset`` (``"spec"`` for the spot check); a size below 1, fewer than 2
    replicates (no standard error) or an ``output_dir`` that cannot be written raise ``ValueError`` before
    the sweep starts.
    """
    n_sigma, n_a, n_omega, n_lr, replicates, steps = (
        default if given is None else given for given, default in zip(
            (n_sigma, n_a, n_omega, n_lr, replicates, steps), GRIDS["spec" if spot_check else preset], strict=True))
    if min(n_sigma, n_a, n_omega, n_lr, steps, workers) < 1 or replicates < 2:
        raise ValueError(f"--n_sigma, --n_a, --n_omega, --n_lr, --steps and --workers must be >= 1 and --replicates "
                         f">= 2 (for a stderr); got {n_sigma}, {n_a}, {n_omega}, {n_lr}, {steps}, {workers}, "
                         f"{replicates}")
    output_dir = Path(output_dir)
    if problem := unwritable_dir(output_dir):
        raise ValueError(f"--output_dir {output_dir} cannot hold the CSV and plots: {problem}. Pass another "
                         "--output_dir.")
    lrs = torch.logspace(-3, 0, n_lr, dtype=torch.float64).tolist()
    run = dict(replicates=replicates, steps=steps, seed=seed, workers=workers)
    if spot_check:
        cells = make_cells(*zip(*SPEC_SPOT_VALUES, strict=True))
        print("\n".join(spot_check_lines(best_over_lr(sweep(cells, optimizers, lrs, **run), lrs))))
        return
    rows = []
    for y in panels:
        panel = make_panel(y, n_sigma, n_a if y == "a" else n_omega)
        start = time.perf_counter()
        best = best_over_lr(sweep(panel.cells(), optimizers, lrs, progress=True, **run), lrs)
        elapsed = time.perf_counter() - start
        plot_winner_map(panel, best, output_dir / f"valley_sigma_{y}.png",
                        f"winner: best-of-{n_lr}-lr mean final loss, {replicates} replicates x {steps} steps")
        rows += summary_rows(panel, best)
        print(f"sigma x {y}: {len(panel.sigmas)} x {len(panel.ys)} cells, {n_lr} lr, {replicates} replicates, "
              f"{steps} steps, {len(optimizers)} optimizers: {elapsed:.0f} s")
    write_csv(rows, output_dir / "valley.csv")
    print(f"wrote valley.csv and valley_sigma_{{{','.join(panels)}}}.png in {output_dir}")
