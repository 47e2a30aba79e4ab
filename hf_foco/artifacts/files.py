"""The files a finished run's output directory holds, and how they are read and written."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

RUN_INFO_FILE = "run_info.json"
TRAINING_ARGS_FILE = "training_args.json"
TRAINER_STATE_FILE = "trainer_state.json"
STABILITY_FILE = "stability.json"
LOSS_CURVE_FILE = "loss_curve.png"
MODEL_CARD_FILE = "README.md"
# run_info.json's optimizer "class" for transformers' own optimizers (an --optim name outside hf_foco's registry).
NATIVE_CLASS = "transformers built-in"


def read_json(path: str | Path, missing: Any = None) -> Any:
    """The JSON in ``path``, or ``missing`` when there is no such file."""
    path = Path(path)
    if not path.is_file():
        return missing
    return json.loads(path.read_text())


def write_json(path: str | Path, obj: Any) -> None:
    Path(path).write_text(json.dumps(obj, indent=2, default=list))


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
