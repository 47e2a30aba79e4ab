"""One run of a study: ``python -m hf_foco.compare.train RECIPE.yaml [--hessian_* N] [--key value ...]``.

It is :func:`hf_foco.pretrain.main` plus the diagnostics a comparison needs in the log history:

* ``wall_time_s`` (seconds since training began) on every log entry, so curves can be drawn against wall
  time including evaluation pauses (the Trainer logs no timestamps);
* with ``--hessian_every_n_steps K``, the top Hessian eigenvalue every K steps (see :mod:`.sharpness`).

Every other key goes to the pretraining pipeline unchanged.
"""

from __future__ import annotations

import argparse
import sys
import time

from transformers import TrainerCallback

from .sharpness import DEFAULT_BATCH_SIZE, DEFAULT_ITERATIONS, HessianEigenvalueCallback

WALL_TIME_KEY = "wall_time_s"


class WallClockCallback(TrainerCallback):
    """Stamps ``wall_time_s`` on each log entry as it is written (the entry ``Trainer.log`` just appended)."""

    def __init__(self):
        self.start: float | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.perf_counter()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.start is not None and state.log_history:
            state.log_history[-1][WALL_TIME_KEY] = time.perf_counter() - self.start


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], add_help=False)
    parser.add_argument("--hessian_every_n_steps", type=int, default=0,
                        help="measure the top Hessian eigenvalue every N steps (0: off)")
    parser.add_argument("--hessian_iterations", type=int, default=DEFAULT_ITERATIONS,
                        help="power iterations per measurement")
    parser.add_argument("--hessian_batch_size", type=int, default=DEFAULT_BATCH_SIZE,
                        help="rows of the fixed eval batch")
    return parser


def _callbacks_and_rest(argv: list[str]) -> tuple[list[TrainerCallback], list[str]]:
    """This module's callbacks, built from its own keys, and the keys left for the pipeline."""
    args, rest = _parser().parse_known_args(argv)
    callbacks: list[TrainerCallback] = [WallClockCallback()]
    if args.hessian_every_n_steps:
        callbacks.append(HessianEigenvalueCallback(args.hessian_every_n_steps, args.hessian_iterations,
                                                   args.hessian_batch_size))
    return callbacks, rest


def check_arguments(argv: list[str]) -> None:
    """Parse a run's command line exactly as :func:`main` would, without training or touching data: a bad
    key or value (say, betas for an optimizer that takes none) fails here, before a study starts."""
    from ..pretrain import parse_args

    try:
        parse_args(_callbacks_and_rest(argv)[1])
    except SystemExit as exit_:  # argparse has printed its message
        raise ValueError(f"invalid command line (argparse exit {exit_.code}, message above)") from None


def main(argv: list[str] | None = None) -> int:
    from ..pretrain import main as pretrain

    callbacks, rest = _callbacks_and_rest(sys.argv[1:] if argv is None else argv)
    return pretrain(rest, callbacks=callbacks)


if __name__ == "__main__":
    sys.exit(main())
