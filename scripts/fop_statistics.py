"""β*/η* that FOP chose in a study's runs: median over logged steps of the per-step median |β*| and η*.

FOP logs ``fop/beta_abs_median`` and ``fop/eta_median`` (the medians over its K-FAC layers) on every
logging step (:class:`hf_foco.trainer.StabilityCallback`); this reads them back from each run's
``trainer_state.json`` under a study's output directory and prints one row per run.

    python scripts/fop_statistics.py runs/studies/gpt2-nano-large-batch
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study_dir", type=Path, help="a study's output directory (hf-foco compare --output_dir)")
    args = parser.parse_args()
    paths = sorted(args.study_dir.glob("runs/**/trainer_state.json"))
    rows = []
    for path in paths:
        history = json.loads(path.read_text())["log_history"]
        beta = [e["fop/beta_abs_median"] for e in history if "fop/beta_abs_median" in e]
        eta = [e["fop/eta_median"] for e in history if "fop/eta_median" in e]
        if beta:
            rows.append((str(path.parent.relative_to(args.study_dir / "runs")), statistics.median(beta),
                         max(beta), statistics.median(eta), len(beta)))
    if not rows:
        raise SystemExit(f"No FOP run with logged beta*/eta* under {args.study_dir}/runs (logging_steps > 0?).")
    print("| run | median abs(beta*) | max of the per-step medians | median eta* | logged steps |")
    print("|---|---:|---:|---:|---:|")
    for run, beta, top, eta, count in rows:
        print(f"| {run} | {beta:.3f} | {top:.3f} | {eta:.3f} | {count} |")


if __name__ == "__main__":
    main()
