"""Running a study: one subprocess per run, resumable, with one progress bar over the whole study.

Each run is a separate process (``python -m hf_foco.cli train RECIPE --key value ...``, the pretraining job, by
default) so a run
that crashes or blows up is recorded as failed and the study goes on. A run counts as done only when its
output directory holds ``run.json``, written after the process exits; a directory without it is the
remains of an interrupted run and is cleared before the run starts again. Failed runs are not retried on
resume unless asked (``retry_failed``): a divergence usually repeats.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from huggingface_hub.utils import tqdm
from transformers.trainer_utils import get_last_checkpoint

from ..artifacts.files import STABILITY_FILE, TRAINER_STATE_FILE, read_json, write_json
from .analysis import RunLog, train_runtime
from .study import RunSpec, Study

DEFAULT_LAUNCHER = (sys.executable, "-m", "hf_foco.cli", "train")
MARKER = "run.json"
LOG_FILE = "train.log"


def read_marker(run: RunSpec) -> dict[str, Any] | None:
    return read_json(run.output_dir / MARKER)


def execute(run: RunSpec, launcher: Sequence[str] = DEFAULT_LAUNCHER) -> dict[str, Any]:
    """Run one training process to completion and write its ``run.json`` marker; returns the marker."""
    if run.output_dir.exists():
        shutil.rmtree(run.output_dir)
    run.output_dir.mkdir(parents=True)
    command = [*launcher, *run.argv()]
    start = time.perf_counter()
    with open(run.output_dir / LOG_FILE, "w") as log:
        returncode = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT).returncode
    marker = {"status": "finished" if returncode == 0 else "failed", "returncode": returncode,
              "wall_time_s": time.perf_counter() - start, "command": command, **run.describe()}
    write_json(run.output_dir / MARKER, marker)
    return marker


def run_study(study: Study, launcher: Sequence[str] = DEFAULT_LAUNCHER, retry_failed: bool = False) -> list[RunSpec]:
    """Run every run of ``study`` that is not done yet; returns the runs started in this call."""
    runs = study.runs()
    done = {r.name for r in runs if (m := read_marker(r)) and (m["status"] == "finished" or not retry_failed)}
    pending = [r for r in runs if r.name not in done]
    with tqdm(total=len(runs), initial=len(runs) - len(pending), desc=study.name, unit="run") as bar:
        for run in pending:
            bar.set_postfix_str(run.name)
            marker = execute(run, launcher)
            if marker["status"] != "finished":
                bar.write(f"{run.name}: exit code {marker['returncode']}, see {run.output_dir / LOG_FILE}")
            bar.update()
    return pending


def load_run(run: RunSpec) -> RunLog | None:
    """What a run logged, or None if it has not run. ``trainer_state.json`` is read from the output
    directory (``Trainer.save_state``) or else from the last checkpoint; ``stability.json`` if present."""
    marker = read_marker(run)
    if marker is None:
        return None
    state = read_json(run.output_dir / TRAINER_STATE_FILE, {})
    if not state and (checkpoint := get_last_checkpoint(str(run.output_dir))):
        state = read_json(Path(checkpoint) / TRAINER_STATE_FILE, {})
    history = state.get("log_history", [])
    return RunLog(name=run.name, group=run.group, optimizer=run.optimizer, learning_rate=run.learning_rate,
                  seed=run.seed, crashed=marker["status"] != "finished", log_history=history,
                  stability=read_json(run.output_dir / STABILITY_FILE, {}), tokens_per_step=run.tokens_per_step,
                  runtime_s=train_runtime(history) or marker["wall_time_s"])
