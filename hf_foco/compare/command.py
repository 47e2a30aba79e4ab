"""``hf-foco compare STUDY.yaml``: check the study, run what is not done, and report, with the exit code that
says whether the study produced a result."""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..rundir import unwritable_dir
from .report import write_report
from .runner import DEFAULT_LAUNCHER, LOG_FILE, check_runs, current_runs, load_run, read_marker, run_study
from .study import Study


class StudyFailed(RuntimeError):
    """The study ran but none of its runs finished: no result to report."""


def report_study(study: Study) -> dict[str, Any]:
    """Load every run of ``study`` that has finished (grid extensions included) and write its report next to
    the runs; works on a study still running or interrupted."""
    loaded = {spec.name: load_run(spec) for spec in current_runs(study)}
    return write_report(study.name, [r for r in loaded.values() if r is not None], study.output_dir,
                        [grid.name for grid in study.optimizers], study.analysis,
                        pending=[name for name, r in loaded.items() if r is None])


def compare(study_file: str | Path, output_dir: str | Path | None = None, launcher: Sequence[str] | None = None,
            learning_rates_from: str | Path | None = None, jobs: int = 1, threads_per_run: int | None = None,
            retry_failed: bool = False, report_only: bool = False, dry_run: bool = False) -> None:
    """Run the study in ``study_file`` (the arguments are ``hf-foco compare``'s options) and write its report.

    A study that cannot run (a bad file, a run the job would refuse, an output directory that cannot be
    written) raises ``ValueError`` before any run starts; one none of whose runs has finished (all failed, or
    none run yet with ``report_only``) raises :class:`StudyFailed` after its report."""
    launcher = list(launcher or DEFAULT_LAUNCHER)
    study = Study.from_yaml(study_file, output_dir, learning_rates_from)
    # Before real runs only: the check is about this host too (bf16 recipes fail on a CPU), and a custom
    # launcher may take other keys.
    if not (dry_run or report_only) and launcher == list(DEFAULT_LAUNCHER):
        check_runs(study)
    if problem := unwritable_dir(study.output_dir):
        raise ValueError(f"the study's output_dir {study.output_dir} cannot hold its runs: {problem}. Pass "
                         "another --output_dir.")
    if dry_run:
        for spec in current_runs(study):
            status = (read_marker(spec) or {}).get("status", "pending")
            print(f"[{status}] {shlex.join([*launcher, *spec.argv()])}")
        return
    if not report_only:
        run_study(study, launcher, retry_failed=retry_failed, jobs=jobs, threads_per_run=threads_per_run)
    report_study(study)
    print(f"Report: {study.output_dir / 'report.md'}")
    # A diverged learning rate is a result; a study none of whose runs finished (failed, or not run yet) has none.
    status = {spec.name: (read_marker(spec) or {}).get("status") for spec in study.runs()}
    if "finished" not in status.values():
        failed = [spec for spec in study.runs() if status[spec.name] == "failed"]
        why = (f"the first one's log is {failed[0].output_dir / LOG_FILE}. Fix the study's overrides or "
               "recipe, then rerun with --retry_failed" if failed else
               "run the study first (the same command without --report_only)")
        raise StudyFailed(f"none of the study's {len(status)} run(s) finished; {why}.")
