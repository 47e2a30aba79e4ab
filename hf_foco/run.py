"""Run an unmodified Trainer script with hf_foco's optimizers: ``hf-foco run SCRIPT.py [args...]``.

transformers has no plugin point for ``--optim`` names (``OptimizerNames`` is a closed enum), so a stock
script such as ``examples/pytorch/language-modeling/run_clm.py`` refuses ``--optim foco`` in argparse.
:func:`install` puts :class:`~hf_foco.trainer.FocoTrainer` and
:class:`~hf_foco.trainer.FocoTrainingArguments` where such a script looks them up: the ``Trainer`` and
``TrainingArguments`` attributes of the ``transformers`` package (the lazy module object that
``import transformers`` really returns, which is not the module object its ``__init__`` started as), of
``transformers.trainer`` and of ``transformers.training_args``. ``from transformers import Trainer,
TrainingArguments`` then gives the script hf_foco's classes: its ``HfArgumentParser`` accepts every registry
name (and says "did you mean" for a typo), a native name keeps its meaning, and the Trainer adds the stability
monitor, the half-batch step (fop), the curvature feed (kfac, fop), the pretraining model card and the push.

Classes a script derives after :func:`install` (its own ``class MyArgs(TrainingArguments)``, or
transformers' ``Seq2SeqTrainer`` imported for the first time) derive from hf_foco's and keep that behaviour
after :func:`uninstall`; ones derived before it (``Seq2SeqTrainer`` already imported, TRL's trainers) do not
change.

Three ways in (the README's integration section shows them side by side):

* ``hf-foco run SCRIPT.py [args...]`` or ``python -m hf_foco.run SCRIPT.py [args...]``, which is also what
  launchers take: ``accelerate launch -m hf_foco.run SCRIPT.py ...``, ``torchrun -m hf_foco.run ...``;
* ``hf_foco.install()`` (undo: ``hf_foco.uninstall()``, or ``with hf_foco.installed(): ...``) in a notebook,
  before the cell that builds the arguments;
* the one-line import swap ``from hf_foco import FocoTrainer as Trainer, FocoTrainingArguments as
  TrainingArguments``, which patches nothing.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import runpy
import sys
from collections.abc import Iterator

from .allocator import tune_allocator

USAGE = """\
usage: hf-foco run SCRIPT.py [script arguments ...]
       python -m hf_foco.run SCRIPT.py [script arguments ...]
       accelerate launch [launcher options] -m hf_foco.run SCRIPT.py [script arguments ...]

Runs SCRIPT.py unchanged, as `python SCRIPT.py ...` would, with transformers' Trainer and
TrainingArguments replaced by hf_foco's FocoTrainer and FocoTrainingArguments: its --optim then takes
every hf_foco optimizer (`hf-foco optimizers` lists them) beside transformers' own. On Linux (glibc) the
process keeps freed training memory mapped for reuse; HF_FOCO_MALLOC_TUNING=0 turns that off.

example:
  hf-foco run tests/scripts/stock_clm.py --do_train --do_eval --optim foco --output_dir runs/stock-foco
  hf-foco run SCRIPT.py --help      (the script's own options, --optim choices included)
"""

# (module name, attribute) -> the object that was there before install(); empty when not installed.
_ORIGINALS: dict[tuple[str, str], object] = {}


def _targets() -> dict[tuple[str, str], object]:
    """Every place a script finds the two classes, with the hf_foco class to put there."""
    from .trainer import FocoTrainer, FocoTrainingArguments

    return {("transformers", "Trainer"): FocoTrainer, ("transformers", "TrainingArguments"): FocoTrainingArguments,
            ("transformers.trainer", "Trainer"): FocoTrainer,
            ("transformers.training_args", "TrainingArguments"): FocoTrainingArguments}


def is_installed() -> bool:
    """Whether :func:`install` is in effect."""
    return bool(_ORIGINALS)


def install() -> None:
    """Make ``transformers.Trainer`` / ``TrainingArguments`` hf_foco's ``FocoTrainer`` /
    ``FocoTrainingArguments`` for every later lookup (see the module docstring). Calling it twice is harmless;
    :func:`uninstall` undoes it."""
    if is_installed():
        return
    for (module, name), replacement in _targets().items():
        # import_module returns what sys.modules holds once the import is done: for "transformers", the lazy
        # module its __init__ put there in place of itself, which is what a script's import will find.
        target = importlib.import_module(module)
        # Read through __dict__ first: on the lazy top-level module, getattr would import on demand.
        _ORIGINALS[(module, name)] = target.__dict__[name] if name in target.__dict__ else getattr(target, name)
        setattr(target, name, replacement)


def uninstall() -> None:
    """Put transformers' own classes back where :func:`install` replaced them (a place someone else has
    patched since is left alone)."""
    from .trainer import FocoTrainer, FocoTrainingArguments

    for (module, name), original in _ORIGINALS.items():
        target = sys.modules.get(module)
        if target is not None and getattr(target, name, None) in (FocoTrainer, FocoTrainingArguments):
            setattr(target, name, original)
    _ORIGINALS.clear()


@contextlib.contextmanager
def installed() -> Iterator[None]:
    """``with hf_foco.installed(): ...``: :func:`install` for the block; undone after it only if this block
    installed it."""
    already = is_installed()
    install()
    try:
        yield
    finally:
        if not already:
            uninstall()


def run_script(path: str | os.PathLike, args: list[str]) -> None:
    """Run the Python file ``path`` as ``__main__`` with ``sys.argv = [path, *args]`` and its folder first on
    ``sys.path`` (as ``python path args...`` does), inside :func:`installed`. The script's ``SystemExit``
    passes through."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise SystemExit(f"hf-foco run: error: no script {path!r}.\n\n{USAGE}")
    saved_argv, saved_path = sys.argv, list(sys.path)
    sys.argv = [path, *args]
    sys.path.insert(0, os.path.dirname(os.path.abspath(path)))
    try:
        with installed():
            runpy.run_path(path, run_name="__main__")
    finally:
        sys.argv, sys.path[:] = saved_argv, saved_path


def main(argv: list[str] | None = None) -> int:
    """``SCRIPT.py [args...]``: run the script (its exit code is this one's), in a process whose allocator keeps
    training memory mapped between steps (:func:`hf_foco.allocator.tune_allocator`: glibc only;
    ``HF_FOCO_MALLOC_TUNING=0`` leaves glibc's defaults)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    tune_allocator()  # before the script allocates its model and batches
    run_script(argv[0], argv[1:])
    return 0


if __name__ == "__main__":
    # Through the package's module, so that hf_foco.uninstall() in the script sees what was installed.
    from hf_foco.run import main as _main

    sys.exit(_main())
