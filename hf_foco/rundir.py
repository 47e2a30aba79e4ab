"""The run directory: the name of every file a run of hf_foco leaves, the log keys other packages read, and
how the directory is read, written and checked.

A run's ``output_dir`` holds transformers' files (weights, config, tokenizer, ``checkpoint-N`` directories,
``trainer_state.json`` and the ``*_results.json`` of ``Trainer.save_metrics``) and hf_foco's own: the stability
summary, the run record, the NaN guard's records, the resume record in each checkpoint, the loss curve and the
model card. Everything that reads or writes these files takes the names from here, so the trainer, the
pretraining job, the study reports and ``hf-foco push`` agree on them; nothing here imports the training stack.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

# -- files of the output directory ------------------------------------------------------------------------
TRAINER_STATE_FILE = "trainer_state.json"  # Trainer.save_state: the log history, also in every checkpoint
TRAINING_ARGS_FILE = "training_args.json"
RUN_INFO_FILE = "run_info.json"  # what only the live run knows: optimizer, hardware, data, card metadata
STABILITY_FILE = "stability.json"  # the stability monitor's summary
NONFINITE_FILE = "nonfinite.json"  # the NaN guard's stop: the first bad step and the last good checkpoint
EARLIER_NONFINITE_FILE = "nonfinite.earlier.json"  # an earlier attempt's record, once a rerun ended well
LOSS_CURVE_FILE = "loss_curve.png"
MODEL_CARD_FILE = "README.md"
WEIGHTS_FILES = ("model.safetensors", "model.safetensors.index.json")  # one of them: the final weights
CONFIG_FILE = "config.json"
EVAL_RESULTS_FILE = "eval_results.json"  # Trainer.save_metrics("eval")
TRAIN_RESULTS_FILE = "train_results.json"  # Trainer.save_metrics("train")
ALL_RESULTS_FILE = "all_results.json"  # Trainer.save_metrics, every split together

# -- files inside a checkpoint-N directory ----------------------------------------------------------------
RESUME_RECORD = "resume_record.json"  # the settings a resume compares (also written beside the final weights)
POISONED = "nonfinite_next_step.json"  # the step after this checkpoint was non-finite: never resumed from

# -- keys of the Trainer's log history that hf_foco adds --------------------------------------------------
WALL_TIME_KEY = "wall_time_s"  # seconds since training began, on every log entry
EIGENVALUE_KEY = "top_hessian_eigenvalue"
RESIDUAL_KEY = "top_hessian_eigenvalue_residual"

# run_info.json's optimizer "class" for transformers' own optimizers (an --optim name outside hf_foco's registry).
NATIVE_CLASS = "transformers built-in"


def final_files(stability: bool = True) -> tuple[str, ...]:
    """What a finished run of the pretraining job leaves in its output directory (``WEIGHTS_FILES``: either);
    ``stability``: the stability monitor ran, so its summary is one of them."""
    return (WEIGHTS_FILES[0], CONFIG_FILE, EVAL_RESULTS_FILE, ALL_RESULTS_FILE, TRAINER_STATE_FILE,
            TRAINING_ARGS_FILE, RUN_INFO_FILE, RESUME_RECORD, *((STABILITY_FILE,) if stability else ()),
            LOSS_CURVE_FILE, MODEL_CARD_FILE)


def missing_files(output_dir: str | Path, names: Iterable[str]) -> list[str]:
    """Which of ``names`` ``output_dir`` lacks (the weights count as present in either of their forms)."""
    out = Path(output_dir)
    present = {name for name in names if (out / name).is_file()}
    if any((out / name).is_file() for name in WEIGHTS_FILES):
        present.update(WEIGHTS_FILES)
    return [name for name in names if name not in present]


def read_json(path: str | Path, missing: Any = None) -> Any:
    """The JSON in ``path``, or ``missing`` when there is no such file."""
    path = Path(path)
    if not path.is_file():
        return missing
    return json.loads(path.read_text())


def write_json(path: str | Path, obj: Any) -> None:
    Path(path).write_text(json.dumps(obj, indent=2, default=list))


def write_resume_record(directory: str | Path, record: dict) -> None:
    """``directory/resume_record.json``: the settings a later resume compares (values JSON cannot hold, such
    as dtypes, as their text)."""
    (Path(directory) / RESUME_RECORD).write_text(json.dumps(record, indent=2, default=str))


def unwritable_dir(path: str | Path) -> str | None:
    """Why ``path`` cannot become a directory to write in (a file is in the way, or no write permission), else
    None: checked before a job's work, not at its first write."""
    path = Path(path).absolute()
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        return f"{existing} is a file, not a directory"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} is not writable"
    return None


def unwritable_run_dir(output_dir: str | Path) -> str | None:
    """Why a run could not save into ``output_dir``, or None: the directory itself (:func:`unwritable_dir`), and
    everything already in it that a save writes over or removes (its files, its ``checkpoint-*`` directories
    and their files: a resumed run rewrites the checkpoints after its start, and ``--save_total_limit``
    deletes old ones)."""
    if problem := unwritable_dir(output_dir):
        return problem
    out = Path(output_dir)
    if not out.is_dir():
        return None
    for path in sorted(out.iterdir()):
        if path.is_dir() and path.name.startswith("checkpoint-"):
            if not os.access(path, os.W_OK | os.X_OK):
                return f"{path} is not writable"
            files = [p for p in path.iterdir() if p.is_file()]
        else:
            files = [path] if path.is_file() else []
        if bad := next((p for p in files if not os.access(p, os.W_OK)), None):
            return f"{bad} is not writable"
    return None
