"""Running a study: one subprocess per run, ``jobs`` at a time, resumable, one progress bar over the study.

Each run is a separate process (``python -m hf_foco.cli train RECIPE --key value ...``, the pretraining job, by
default) so a run
that crashes or blows up is recorded as failed and the study goes on. A run counts as done only when its
output directory holds ``run.json``, written after the process exits; a directory without it is the
remains of an interrupted run and is cleared before the run starts again. Failed runs are not retried on
resume unless asked (``retry_failed``): a divergence usually repeats.

``jobs`` runs go at once, each with ``threads_per_run`` OpenMP/MKL threads (default: the CPU count split
between the jobs; with one job the environment's own setting stands). A grid extension
(:func:`hf_foco.compare.analysis.grid_extension`) is decided as soon as the last run of its grid finishes,
and its runs join the queue; :func:`current_runs` re-derives the decisions from the finished runs, so a
resumed study and a report on a partial study see the same grid.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

from huggingface_hub.utils import tqdm
from transformers.trainer_utils import get_last_checkpoint

from ..rundir import STABILITY_FILE, TRAINER_STATE_FILE, WALL_TIME_KEY, read_json, write_json
from .analysis import RunLog, analyse_run, grid_extension, train_runtime
from .study import RunSpec, Study

DEFAULT_LAUNCHER = (sys.executable, "-m", "hf_foco.cli", "train")
MARKER = "run.json"
LOG_FILE = "train.log"


def read_marker(run: RunSpec) -> dict[str, Any] | None:
    return read_json(run.output_dir / MARKER)


def execute(run: RunSpec, launcher: Sequence[str] = DEFAULT_LAUNCHER, env: Mapping[str, str] | None = None
            ) -> dict[str, Any]:
    """Run one training process to completion (with ``env`` added to the environment) and write its
    ``run.json`` marker; returns the marker."""
    if run.output_dir.exists():
        shutil.rmtree(run.output_dir)
    run.output_dir.mkdir(parents=True)
    command = [*launcher, *run.argv()]
    start = time.perf_counter()
    with open(run.output_dir / LOG_FILE, "w") as log:
        returncode = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT,
                                    env={**os.environ, **(env or {})}).returncode
    marker = {"status": "finished" if returncode == 0 else "failed", "returncode": returncode,
              WALL_TIME_KEY: time.perf_counter() - start, "command": command, **run.describe()}
    write_json(run.output_dir / MARKER, marker)
    return marker


def check_runs(study: Study) -> None:
    """Vet one run per (group, optimizer) with the pretraining job's own parser, in one process of its own
    (``python -m hf_foco.pretrain --check``): a key or value the job rejects fails the study now, with the
    job's message, not in each of its runs."""
    first: dict[tuple[str, str], RunSpec] = {}
    for spec in study.runs():
        first.setdefault((spec.group, spec.optimizer), spec)
    specs = list(first.values())
    command = [sys.executable, "-m", "hf_foco.pretrain", "--check"]
    done = subprocess.run(command, input=json.dumps([spec.argv() for spec in specs]), capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{shlex.join(command)} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    for spec, problem in zip(specs, json.loads(done.stdout), strict=True):
        if problem is not None:
            raise ValueError(f"Study {study.path}: run {spec.name} would fail: {problem}. Fix the study's "
                             "overrides or the recipe.")


def current_runs(study: Study) -> list[RunSpec]:
    """The study's runs as of now: its grid plus every extension that its finished runs call for."""
    extensions: dict[tuple[str, str], list[float]] = {}
    loaded: dict[str, RunLog | None] = {}
    while True:
        runs = study.runs(extensions)
        grids: dict[tuple[str, str], list[RunSpec]] = {}
        for spec in runs:
            grids.setdefault((spec.group, spec.optimizer), []).append(spec)
        added = False
        for key, specs in grids.items():
            if len(extensions.get(key, ())) >= study.max_grid_extensions:
                continue
            logs = [loaded[s.name] if s.name in loaded else loaded.setdefault(s.name, load_run(s)) for s in specs]
            if all(logs):
                lr = grid_extension([analyse_run(log, study.analysis) for log in logs])
                if lr is not None:
                    extensions.setdefault(key, []).append(lr)
                    added = True
        if not added:
            return runs


def thread_settings(jobs: int, threads_per_run: int | None) -> dict[str, str]:
    """The environment that gives each of ``jobs`` concurrent runs its share of the CPU threads."""
    if threads_per_run is None and jobs == 1:
        return {}
    threads = str(threads_per_run or max(1, (os.cpu_count() or 1) // jobs))
    return {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}


def run_study(study: Study, launcher: Sequence[str] = DEFAULT_LAUNCHER, retry_failed: bool = False, jobs: int = 1,
              threads_per_run: int | None = None) -> list[RunSpec]:
    """Run every run of ``study`` that is not done yet, ``jobs`` at a time, extending grids as they finish;
    returns the runs started in this call, in the order they started."""
    if jobs < 1 or (threads_per_run is not None and threads_per_run < 1):
        raise ValueError(f"--jobs {jobs} / --threads_per_run {threads_per_run}: both must be >= 1.")
    env = thread_settings(jobs, threads_per_run)
    started: list[RunSpec] = []

    def is_done(spec: RunSpec) -> bool:
        marker = read_marker(spec)
        return marker is not None and (marker["status"] == "finished" or not retry_failed)

    runs = current_runs(study)
    with ThreadPoolExecutor(jobs) as pool, tqdm(total=len(runs), initial=sum(map(is_done, runs)), desc=study.name,
                                                 unit="run") as bar:
        running: dict[Any, RunSpec] = {}
        while True:
            names = {spec.name for spec in started}
            todo = [spec for spec in runs if spec.name not in names and not is_done(spec)]
            for spec in todo[: jobs - len(running)]:
                running[pool.submit(execute, spec, launcher, env)] = spec
                started.append(spec)
            if not running:
                return started
            bar.set_postfix_str(", ".join(spec.name for spec in running.values()))
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                spec, marker = running.pop(future), future.result()
                if marker["status"] != "finished":
                    bar.write(f"{spec.name}: exit code {marker['returncode']}, see {spec.output_dir / LOG_FILE}")
                bar.update()
            runs = current_runs(study)
            bar.total = len(runs)
            bar.refresh()


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
                  runtime_s=train_runtime(history) or marker[WALL_TIME_KEY])
