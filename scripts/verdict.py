"""The README's verdict table: each FOCUS-paper claim, the measurement behind it, and a verdict by a fixed rule.

Reads the noise study's and the length study's ``summary.json`` (``hf-foco compare ... --report_only`` writes
them, also for a partial study: the committed copies in docs/ will do); prints a markdown table. A claim whose runs are not there yet says "pending". The rules (Δ: a difference of
seed means, each optimizer at its best LR; se: its standard error, sqrt(sd₁²/n₁ + sd₂²/n₂)):

(a) FOCUS/foco reach AdamW's loss in fewer steps: both reach AdamW's target (the loss every AdamW seed
    reaches at its best LR) on every seed with a speedup > 1 (in steps; equal to the speedup in tokens
    within a group). Holds if so in every group,
    does not hold if in none.
(b) Their advantage grows with gradient noise: advantage = AdamW's final loss − theirs; holds if it is
    larger at the small batch than at the large one by more than 2 se (for FOCUS and foco), does not
    hold if smaller by more than 2 se, else not shown.
(c) FOCUS tolerates larger LRs than AdamW and Signum: LR sensitivity (lower is more tolerant) and LR
    headroom = largest stable LR / best LR (a lower bound, ≥, when nothing in the grid diverged); LRs
    themselves are not comparable across optimizers, their ratios are. Holds if, at both batch sizes,
    FOCUS has the lowest sensitivity of the three, does not hold if it has the highest at both.
(d) FOCUS's sharpness stays lower than Signum's: seed-mean top Hessian eigenvalue at every measured step
    after 0 of the length runs at the best LR (the summary's ``top_hessian_eigenvalue``); holds if FOCUS's is lower at every one, does not hold if higher at every one.
(e) foco = FOCUS within seed noise: |Δ| ≤ 2 se in every group.
(f) FOP beats K-FAC and AdamW at large batch: at the largest batch, holds if FOP's final loss is lower than
    both by more than 2 se, does not hold if higher than either by more than 2 se, else not shown.

    python scripts/verdict.py --noise docs/gpt2-nano-noise --length docs/gpt2-nano-length   # the committed copies
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

PENDING = "pending: study running"


def _summary(directory: Path | None) -> dict[str, Any] | None:
    path = directory / "summary.json" if directory else None
    return json.loads(path.read_text()) if path and path.is_file() else None


def _groups_by_batch(summary: dict[str, Any] | None, study: str) -> list[tuple[str, dict[str, Any]]]:
    """(label, group) sorted by tokens per step, smallest batch first; labelled by study and batch."""
    if not summary:
        return []
    groups = sorted(summary["groups"].values(), key=lambda group: group.get("tokens_per_step") or 0)
    return [(f"{study} {group.get('tokens_per_step')} tok/step", group) for group in groups]


def _final(group: dict[str, Any], optimizer: str) -> dict[str, float] | None:
    entry = group["optimizers"].get(optimizer)
    return entry["final_eval_loss"] if entry else None


def _delta(group: dict[str, Any], a: str, b: str) -> tuple[float, float] | None:
    """(mean loss of a − mean loss of b, its standard error), or None if either is missing."""
    fa, fb = _final(group, a), _final(group, b)
    if not fa or not fb:
        return None
    return fa["mean"] - fb["mean"], math.sqrt(fa["std"] ** 2 / fa["n"] + fb["std"] ** 2 / fb["n"])


def claim_a(groups: list[tuple[str, dict[str, Any]]]) -> tuple[str, str]:
    cells, fewer = [], []
    for name, group in groups:
        parts, ok = [], True
        for opt in ("focus", "foco"):
            entry = group["optimizers"].get(opt)
            if not entry or entry["speedup"] is None:
                return "", PENDING
            parts.append(f"{opt} {entry['speedup']['mean']:.2f}x, missed {entry['missed']}")
            ok &= entry["missed"] == 0 and entry["speedup"]["min"] > 1
        cells.append(f"{name}: {'; '.join(parts)}")
        fewer.append(ok)
    if not groups:
        return "", PENDING
    verdict = "holds" if all(fewer) else "does not hold" if not any(fewer) else "partly: " + ", ".join(
        name for (name, _), ok in zip(groups, fewer) if ok)
    return "speedup in steps to AdamW's target (seeds at the best LR): " + " / ".join(cells), verdict


def claim_b(groups: list[tuple[str, dict[str, Any]]]) -> tuple[str, str]:
    if len(groups) < 2:
        return "", PENDING
    (small_name, small), (large_name, large) = groups[0], groups[-1]
    cells, signs = [], []
    for opt in ("focus", "foco"):
        ds, dl = _delta(small, "adamw", opt), _delta(large, "adamw", opt)
        if ds is None or dl is None:
            return "", PENDING
        growth, se = ds[0] - dl[0], math.hypot(ds[1], dl[1])
        cells.append(f"{opt}: advantage {ds[0]:+.3f} at {small_name}, {dl[0]:+.3f} at {large_name} "
                     f"(growth {growth:+.3f} ± {se:.3f})")
        signs.append(1 if growth > 2 * se else -1 if growth < -2 * se else 0)
    verdict = "holds" if all(s == 1 for s in signs) else "does not hold" if all(s == -1 for s in signs) else \
        "not shown at this scale"
    return "; ".join(cells), verdict


def claim_c(groups: list[tuple[str, dict[str, Any]]]) -> tuple[str, str]:
    cells, ranks = [], []
    for name, group in groups:
        parts, sensitivity = [], {}
        for opt in ("focus", "adamw", "signum"):
            entry = group["optimizers"].get(opt)
            if not entry or entry["lr_sensitivity"] is None or entry["best_learning_rate"] is None:
                return "", PENDING
            sensitivity[opt] = entry["lr_sensitivity"]
            stable, lrs = entry["largest_stable_lr"], entry["learning_rates"]
            headroom = "-" if stable is None else ("≥ " if stable == max(lrs) else "") + \
                f"{stable / entry['best_learning_rate']:.3g}"
            parts.append(f"{opt} {entry['lr_sensitivity']:.3f} / {headroom}")
        cells.append(f"{name}: " + ", ".join(parts))
        order = sorted(sensitivity, key=sensitivity.get)
        ranks.append(order.index("focus"))
    if len(groups) < 2:
        return "", PENDING
    verdict = "holds" if all(r == 0 for r in ranks) else "does not hold" if all(r == 2 for r in ranks) else \
        "not shown at this scale"
    return "LR sensitivity / headroom (largest stable LR ÷ best LR): " + "; ".join(cells), verdict


def claim_d(groups: list[tuple[str, dict[str, Any]]]) -> tuple[str, str]:
    if not groups:
        return "", PENDING
    name, group = groups[0]
    focus, signum = ({step: value for step, value in (group["optimizers"].get(opt) or {}).get(
        "top_hessian_eigenvalue", [])} for opt in ("focus", "signum"))
    steps = [s for s in focus if s > 0 and s in signum]
    if not steps:
        return "", PENDING
    lower = [focus[s] < signum[s] for s in steps]
    pairs = ", ".join(f"{s:g}: {focus[s]:.3g} vs {signum[s]:.3g}" for s in steps)
    verdict = "holds" if all(lower) else "does not hold" if not any(lower) else "not shown at this scale"
    return f"top Hessian eigenvalue, FOCUS vs Signum (seed means, {name}) at steps {pairs}", verdict


def claim_e(groups: list[tuple[str, dict[str, Any]]]) -> tuple[str, str]:
    cells, within = [], []
    for name, group in groups:
        delta = _delta(group, "foco", "focus")
        if delta is None:
            return "", PENDING
        cells.append(f"{name}: {delta[0]:+.3f} ± {delta[1]:.3f}")
        within.append(abs(delta[0]) <= 2 * delta[1])
    if not groups:
        return "", PENDING
    return "foco − FOCUS final eval loss ± se: " + "; ".join(cells), "holds" if all(within) else "does not hold"


def claim_f(groups: list[tuple[str, dict[str, Any]]]) -> tuple[str, str]:
    if len(groups) < 2:
        return "", PENDING
    name, large = groups[-1]
    deltas = {other: _delta(large, "fop", other) for other in ("kfac", "adamw")}
    if any(d is None for d in deltas.values()):
        return "", PENDING
    cells = [f"FOP − {other}: {d[0]:+.3f} ± {d[1]:.3f}" for other, d in deltas.items()]
    if all(d[0] < -2 * d[1] for d in deltas.values()):
        verdict = "holds"
    elif any(d[0] > 2 * d[1] for d in deltas.values()):
        verdict = "does not hold"
    else:
        verdict = "not shown at this scale"
    return f"final eval loss at {name}: " + "; ".join(cells), verdict


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--noise", type=Path, help="the noise study's output directory")
    parser.add_argument("--length", type=Path, help="the length study's output directory")
    args = parser.parse_args()
    noise, length = _summary(args.noise), _summary(args.length)
    noise_groups, length_groups = _groups_by_batch(noise, "noise"), _groups_by_batch(length, "length")
    claims = [
        ("(a) FOCUS/foco reach AdamW's loss in fewer steps", claim_a(noise_groups + length_groups)),
        ("(b) their advantage grows with gradient noise", claim_b(noise_groups)),
        ("(c) FOCUS tolerates larger LRs than Adam and Signum", claim_c(noise_groups)),
        ("(d) FOCUS's sharpness stays lower than Signum's", claim_d(length_groups)),
        ("(e) foco = FOCUS within seed noise", claim_e(noise_groups + length_groups)),
        ("(f) FOP beats K-FAC and AdamW at large batch", claim_f(noise_groups)),
    ]
    print("| claim | measurement | verdict |\n|---|---|---|")
    for claim, (measurement, verdict) in claims:
        print(f"| {claim} | {measurement or '-'} | {verdict} |")


if __name__ == "__main__":
    main()
