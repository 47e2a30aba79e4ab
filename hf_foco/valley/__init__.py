"""The narrowing valley of the FOCUS paper (Fig. 2): a 2-D toy where gradient noise and a valley that
narrows as it deepens decide whether Adam or a sign method (Signum, FOCUS) reaches the lower loss.

* :mod:`.landscape`: the loss, its gradient and the multiplicative gradient noise;
* :mod:`.toys`: the optimizers, each the package's functional rule on a batch of cells;
* :mod:`.sweep`: every optimizer, learning rate and cell at once (optionally in worker processes), and the
  score and winner per cell;
* :mod:`.grids`: the phase-diagram panels, named resolutions and the spec's spot cells;
* :mod:`.report`: CSV, winner maps and the spot-check table;
* :mod:`.experiment`: ``hf-foco valley``, from the grid settings to those outputs.
"""

from .experiment import run_valley
from .grids import GRIDS, SPEC_SPOT_VALUES, SPOT_OPTIMIZERS, Panel, make_panel
from .landscape import noisy_grad, valley_grad, valley_loss
from .report import plot_winner_map, spot_check_lines, summary_rows, write_csv
from .sweep import best_over_lr, make_cells, sweep, winners
from .toys import TOY_OPTIMIZERS, ToyOptimizer, simulate

__all__ = ["GRIDS", "SPEC_SPOT_VALUES", "SPOT_OPTIMIZERS", "TOY_OPTIMIZERS", "Panel", "ToyOptimizer", "best_over_lr",
           "make_cells", "make_panel", "noisy_grad", "plot_winner_map", "run_valley", "simulate", "spot_check_lines",
           "summary_rows", "sweep", "valley_grad", "valley_loss", "winners", "write_csv"]
