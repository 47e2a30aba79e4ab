"""Paths and short-run arguments for the end-to-end tests of scripts/run_pretrain.py (fixture: conftest.py)."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "run_pretrain.py"


def short_args(out: Path, data_keys: list[str]) -> list[str]:
    """A 2-step run on the ``workspace`` corpus writing to ``out`` (later keys on the command line win)."""
    return ["--output_dir", str(out), "--max_steps", "2", "--per_device_train_batch_size", "4",
            "--per_device_eval_batch_size", "8", "--logging_steps", "1", *data_keys]
