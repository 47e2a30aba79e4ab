"""``hf-foco compare``: the command-line face of a study (heavy imports happen inside ``run``)."""

from __future__ import annotations

import argparse
import shlex
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("study", help="study YAML file (see hf_foco/compare/study.py for the format)")
    parser.add_argument("--output_dir", help="where runs and the report go (default: the study's output_dir, "
                        "else runs/studies/<name>)")
    parser.add_argument("--launcher", help="command that trains one run from `RECIPE --key value ...` "
                        "(default: python -m hf_foco.compare.train, the pipeline plus wall-clock stamps and "
                        "the --hessian_* keys; e.g. 'accelerate launch -m hf_foco.compare.train')")
    parser.add_argument("--retry_failed", action="store_true", help="rerun failed runs (finished runs are "
                        "always skipped)")
    parser.add_argument("--report_only", action="store_true", help="write the report from the runs done so far")
    parser.add_argument("--dry_run", action="store_true", help="print each run's command and status; run nothing")


def run(args: argparse.Namespace) -> int:
    from .report import report_study
    from .runner import DEFAULT_LAUNCHER, read_marker, run_study
    from .study import Study

    launcher = shlex.split(args.launcher) if args.launcher else list(DEFAULT_LAUNCHER)
    try:
        study = Study.from_yaml(args.study, args.output_dir)
        # Before real runs only: the check is about this host too (bf16 recipes fail on a CPU), and a
        # custom launcher may take other keys.
        if not (args.dry_run or args.report_only) and "hf_foco.compare.train" in launcher:
            study.check_runs()
    except ValueError as err:
        print(f"hf-foco compare: {err}", file=sys.stderr)
        return 2
    if args.dry_run:
        for spec in study.runs():
            status = (read_marker(spec) or {}).get("status", "pending")
            print(f"[{status}] {shlex.join([*launcher, *spec.argv()])}")
        return 0
    if not args.report_only:
        run_study(study, launcher, retry_failed=args.retry_failed)
    report_study(study)
    print(f"Report: {study.output_dir / 'report.md'}")
    return 0
