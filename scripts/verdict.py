"""The README's verdict table: each claim, the paired comparisons behind it, and one rule that decides them all.

    python scripts/verdict.py --noise docs/gpt2-nano-noise --length docs/gpt2-nano-length   # the committed copies
    python scripts/verdict.py --study noise=DIR --study length=DIR --study prose=DIR         # any set of studies

Each ``--study NAME=DIR`` reads ``DIR/summary.json`` (``hf-foco compare STUDY.yaml --report_only`` writes it,
also for a partial study); ``--noise DIR`` and ``--length DIR`` are short for ``--study noise=DIR`` and
``--study length=DIR``. Every group of runs of every study takes part in each claim it has the data for; a
claim that no group has data for is "pending". Prints a markdown table and a line counting the comparisons.

**One rule for every comparison** of two optimizers in one group of runs:

* *Pairs.* Each optimizer at its best LR (the summary's), on the seeds both ran there: a seed gives both the
  same initialisation and data order, so the per-seed differences d_i cancel what the seed itself does.
  d_i is oriented so that the claim's side is positive. The values are the summary's per-run rows. Ratios
  (steps to a target) are compared as per-seed log-ratios, their interval exponentiated.
* *Interval.* mean(d) ± t·sd(d)/√n, t the two-sided 95 % quantile of Student's t with n − 1 degrees of
  freedom (12.71 at n = 2, 4.30 at 3, 3.18 at 4, → 1.96). Fewer than 2 pairs: not shown.
* *Outcome.* **holds**: the interval lies on the claim's side of 0 (of 1 for a ratio); **does not hold**: on
  the other side; **not shown**: it contains 0.
* *Equivalence* (claim e): a margin of ``EQUIVALENCE_MARGIN`` = 0.03 nats of final eval loss, fixed before
  looking, and the 90 % interval (two one-sided tests at 5 %): holds if it lies inside (−δ, δ), does not
  hold if it lies wholly beyond +δ or −δ, else not shown. A wide interval around 0 shows nothing.
* *A claim over several comparisons* (optimizers × groups) holds (does not hold) if every comparison does;
  otherwise its verdict names where it holds, does not hold and is not shown. Holding in some of many
  comparisons is weaker than holding in all: each interval is 95 % by itself, not jointly, so where nothing
  differs about one comparison in 20 lands on a side by chance. The table counts the comparisons per claim
  and in all.
* *Seeds, and the winner's curse.* Each best LR is chosen on the selection seeds (those run at every LR of
  the grid; ``hf_foco.compare.analysis``), and the chosen LR's loss on them is optimistically biased. The
  verdict uses every seed both optimizers ran at their best LRs, the selection seeds included, and says how
  many of its pairs are held out (in neither optimizer's selection seeds): seeds added at the best LR only
  are held-out evidence. An LR taken from another study (one LR, no grid) counts its seeds as selection seeds.
* *A missed target* (claim a) counts as the run's last step, a bound (the run needs more): a comparison
  where the optimizer claimed faster missed cannot hold, one where the other missed cannot fail to hold
  (not shown instead).

**The claims** (the FOCUS paper's, then where the new optimizers stand against Muon):

(a) FOCUS/foco reach AdamW's loss in fewer steps: per seed, AdamW's steps to the group's target (the loss
    every AdamW seed reaches at its best LR) ÷ the optimizer's; FOCUS and foco in every group.
(b) Their advantage grows with gradient noise: in each noise study (groups sharing a token budget at
    different batch sizes), per seed (AdamW − X) at the smallest batch − (AdamW − X) at the largest, final
    eval loss, for X = FOCUS and foco.
(c) FOCUS tolerates larger LRs than AdamW and Signum: in every group where all three ran an LR grid, FOCUS
    against each of the two; holds where both measures say so, does not hold where both say the opposite:
    - headroom = largest stable LR ÷ best LR (a property of the grid, no interval). Where nothing diverged
      up to the grid's top it is a bound (≥), which decides only where it already exceeds the other's
      number; otherwise the comparison is "not shown: no divergence reached".
    - LR sensitivity per seed (Wortsman et al. 2023: the mean of min(final eval loss, initial loss) over the
      LRs, minus its minimum) over the ratios to the best LR that both grids ran (LRs are not comparable
      across optimizers, their ratios are; equal spans), at least ``MIN_SHARED_RATIOS`` of them; the
      other's − FOCUS's.
(d) FOCUS's sharpness stays lower than Signum's: per seed, the top Hessian eigenvalue averaged over the steps
    after 0 that both measured (step 0 is the shared initialisation); Signum's − FOCUS's.
(e) foco = FOCUS within seed noise: foco − FOCUS final eval loss, the equivalence rule.
(f) FOP beats K-FAC and AdamW at large batch: at the largest batch of each noise study, K-FAC's − FOP's and
    AdamW's − FOP's final eval loss.
(g) FOCUS, foco and K-FAC against Muon: Muon's − theirs, final eval loss, in every group with Muon runs
    (holds: lower than Muon's).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

HOLDS, FAILS, NOT_SHOWN = "holds", "does not hold", "not shown"
PENDING = "pending: no runs yet"
COVERAGE = 0.95
EQUIVALENCE_COVERAGE = 0.90
EQUIVALENCE_MARGIN = 0.03  # nats of final eval loss, fixed before looking at any study
MIN_SHARED_RATIOS = 3
NO_DIVERGENCE = "no divergence reached"


# -- Student's t -------------------------------------------------------------------------------------------

def t_mass(t: float, df: int) -> float:
    """P(|T| ≤ t) for Student's t with ``df`` degrees of freedom: the finite series of Abramowitz & Stegun
    26.7.3 (odd df) and 26.7.4 (even df), exact for integer df."""
    theta = math.atan(t / math.sqrt(df))
    sin, cos2 = math.sin(theta), math.cos(theta) ** 2
    if df == 1:
        return 2 * theta / math.pi
    term = total = 1.0 if df % 2 == 0 else math.cos(theta)
    for k in range(2 if df % 2 == 0 else 3, df - 1, 2):
        term *= (k - 1) / k * cos2
        total += term
    return sin * total if df % 2 == 0 else 2 / math.pi * (theta + sin * total)


@functools.cache
def t_critical(df: int, coverage: float) -> float:
    """The t with P(|T| ≤ t) = ``coverage``: the half-width of a two-sided interval, in standard errors."""
    low, high = 0.0, 1.0
    while t_mass(high, df) < coverage:
        high *= 2
    for _ in range(60):
        middle = (low + high) / 2
        low, high = (middle, high) if t_mass(middle, df) < coverage else (low, middle)
    return (low + high) / 2


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float
    high: float
    n: int


def interval(values: Sequence[float], coverage: float = COVERAGE) -> Interval | None:
    """mean ± t(n − 1)·sd/√n; None for fewer than 2 values."""
    n = len(values)
    if n < 2:
        return None
    mean = statistics.fmean(values)
    half = t_critical(n - 1, coverage) * statistics.stdev(values) / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n)


def side(found: Interval) -> str:
    return HOLDS if found.low > 0 else FAILS if found.high < 0 else NOT_SHOWN


def equivalence(found: Interval, margin: float = EQUIVALENCE_MARGIN) -> str:
    if -margin < found.low and found.high < margin:
        return HOLDS
    return FAILS if found.low > margin or found.high < -margin else NOT_SHOWN


# -- the studies as the verdict sees them -------------------------------------------------------------------

@dataclass(frozen=True)
class Group:
    """One comparison group of a study: its summary entry and its per-run rows."""

    label: str
    summary: dict[str, Any]
    rows: list[dict[str, Any]]

    def entry(self, optimizer: str) -> dict[str, Any] | None:
        return self.summary["optimizers"].get(optimizer)

    def at_best(self, optimizer: str) -> dict[int, dict[str, Any]]:
        """The optimizer's runs at its best LR, by seed ({} if it has none)."""
        best = (self.entry(optimizer) or {}).get("best_learning_rate")
        return {r["seed"]: r for r in self.rows
                if best is not None and r["optimizer"] == optimizer and r["learning_rate"] == best}

    @property
    def tokens_per_run(self) -> int | None:
        tokens = self.summary.get("tokens_per_step")
        return tokens * max(r["steps"] for r in self.rows) if tokens and self.rows else None


@dataclass(frozen=True)
class Study:
    name: str
    groups: list[Group]  # smallest batch first

    def noise_pair(self) -> tuple[Group, Group] | None:
        """(smallest, largest batch) where the groups share a token budget at different batch sizes."""
        budgets = {g.tokens_per_run for g in self.groups}
        batches = {g.summary.get("tokens_per_step") for g in self.groups}
        if len(self.groups) < 2 or len(budgets) != 1 or None in budgets or len(batches) != len(self.groups):
            return None
        return self.groups[0], self.groups[-1]


def study_from_summary(name: str, summary: dict[str, Any]) -> Study:
    """A study's groups, smallest batch first, labelled by study name and batch (or group name)."""
    keys = sorted(summary["groups"], key=lambda key: summary["groups"][key].get("tokens_per_step") or 0)
    batches = [summary["groups"][key].get("tokens_per_step") for key in keys]
    groups = []
    for key, tokens in zip(keys, batches):
        label = f"{name} {tokens} tok/step" if tokens and batches.count(tokens) == 1 else f"{name} {key}"
        groups.append(Group(label, summary["groups"][key], [r for r in summary["runs"] if r["group"] == key]))
    return Study(name, groups)


# -- one comparison ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Comparison:
    where: str
    measured: str
    outcome: str
    reason: str = ""


def held_out(entries: Sequence[dict[str, Any]], seeds: Sequence[int]) -> int:
    """How many of ``seeds`` are in no entry's selection seeds (0 for summaries that do not list them)."""
    if not all("selection_seeds" in entry for entry in entries):
        return 0
    return sum(all(seed not in entry["selection_seeds"] for entry in entries) for seed in seeds)


def judge(where: str, differences: dict[int, float], entries: Sequence[dict[str, Any]], *, ratio: bool = False,
          margin: float | None = None, note: str = "") -> Comparison:
    """The rule on paired per-seed differences (claim's side positive; log-ratios when ``ratio``)."""
    found = interval(list(differences.values()), COVERAGE if margin is None else EQUIVALENCE_COVERAGE)
    if found is None:
        return Comparison(where, f"{len(differences)} paired seed(s)", NOT_SHOWN, "fewer than 2 paired seeds")
    if ratio:
        text = f"{math.exp(found.mean):.2f}x [{math.exp(found.low):.2f}, {math.exp(found.high):.2f}]"
    else:
        text = f"{found.mean:+.3f} [{found.low:+.3f}, {found.high:+.3f}]"
    extra = held_out(entries, list(differences))
    counts = f"n {found.n}" + (f", {extra} held out" if extra else "") + note
    return Comparison(where, f"{text} ({counts})", side(found) if margin is None else equivalence(found, margin))


def paired(first: dict[int, Any], second: dict[int, Any], value: Callable[[Any], float | None],
           log: bool = False) -> dict[int, float]:
    """first − second (or log(first / second)) of ``value`` per seed both have a finite value for."""
    differences = {}
    for seed in sorted(set(first) & set(second)):
        a, b = value(first[seed]), value(second[seed])
        if a is not None and b is not None and math.isfinite(a) and math.isfinite(b):
            differences[seed] = math.log(a / b) if log else a - b
    return differences


def final_loss(row: dict[str, Any]) -> float | None:
    return row["final_eval_loss"]


def loss_comparisons(groups: Sequence[Group], pairs: Sequence[tuple[str, str]],
                     margin: float | None = None) -> list[Comparison]:
    """Final eval loss, first − second, in every group that has both optimizers."""
    comparisons = []
    for group in groups:
        for first, second in pairs:
            a, b = group.at_best(first), group.at_best(second)
            if a and b:
                comparisons.append(judge(f"{first} − {second} at {group.label}", paired(a, b, final_loss), [group.entry(first), group.entry(second)],
                                         margin=margin))
    return comparisons


# -- the claims ---------------------------------------------------------------------------------------------

def steps_or_bound(row: dict[str, Any]) -> float:
    """Steps to the target; a run that missed it counts at its last step (a bound). At least 1."""
    return max(row["steps"] if row["steps_to_target"] is None else row["steps_to_target"], 1.0)


def claim_a(groups: Sequence[Group]) -> list[Comparison]:
    comparisons = []
    for group in groups:
        adamw = group.at_best("adamw")
        if group.summary.get("target_eval_loss") is None or not adamw:
            continue
        for name in ("focus", "foco"):
            own = group.at_best(name)
            if not own:
                continue
            differences = paired(adamw, own, steps_or_bound, log=True)
            missed = sum(own[s]["steps_to_target"] is None for s in differences)
            reference_missed = sum(adamw[s]["steps_to_target"] is None for s in differences)
            found = judge(f"{name} at {group.label}", differences, [group.entry("adamw"), group.entry(name)],
                          ratio=True, note=f", missed {missed}" if missed else "")
            if (found.outcome == HOLDS and missed) or (found.outcome == FAILS and reference_missed):
                found = replace(found, outcome=NOT_SHOWN, reason="a missed target bounds the interval")
            comparisons.append(found)
    return comparisons


def claim_b(studies: Sequence[Study]) -> list[Comparison]:
    comparisons = []
    for study in studies:
        pair = study.noise_pair()
        if pair is None:
            continue
        small, large = pair
        for name in ("focus", "foco"):
            if not all(g.at_best(o) for g in (small, large) for o in ("adamw", name)):
                continue
            at_small = paired(small.at_best("adamw"), small.at_best(name), final_loss)
            at_large = paired(large.at_best("adamw"), large.at_best(name), final_loss)
            growth = {seed: at_small[seed] - at_large[seed] for seed in sorted(at_small.keys() & at_large.keys())}
            entries = [g.entry(o) for g in (small, large) for o in ("adamw", name)]
            comparisons.append(judge(f"{name} at {small.label} vs {large.label}", growth, entries))
    return comparisons


def headroom(entry: dict[str, Any]) -> tuple[float, bool] | None:
    """(largest stable LR ÷ best LR, whether it is a bound: nothing diverged up to the grid's top)."""
    stable, best = entry["largest_stable_lr"], entry["best_learning_rate"]
    if stable is None or best is None:
        return None
    return stable / best, stable == max(entry["learning_rates"])


def headroom_outcome(focus: tuple[float, bool], other: tuple[float, bool]) -> str | None:
    """FOCUS's headroom against the other's: HOLDS (larger), FAILS (smaller), NOT_SHOWN (equal), or None
    where a bound leaves it open."""
    (mine, my_bound), (theirs, their_bound) = focus, other
    if not my_bound and not their_bound:
        return HOLDS if mine > theirs else FAILS if mine < theirs else NOT_SHOWN
    if my_bound and not their_bound and mine > theirs:
        return HOLDS
    if their_bound and not my_bound and mine < theirs:
        return FAILS
    return None


def _ratio_key(lr: float, best: float) -> int:
    """An LR as its distance from the best LR in hundredths of a doubling (a key that equal ratios share)."""
    return round(100 * math.log2(lr / best))


def sensitivity_per_seed(group: Group, optimizer: str, ratios: set[int]) -> dict[int, float]:
    """Per seed that ran at every ratio in ``ratios``: the mean of its capped final losses over them minus their
    minimum; capped = min(final eval loss, initial loss), the initial loss where the final is not finite."""
    best = group.entry(optimizer)["best_learning_rate"]
    capped: dict[int, dict[int, float]] = {}
    for r in group.rows:
        if r["optimizer"] != optimizer or r["initial_loss"] is None:
            continue
        final = r["final_eval_loss"]
        ok = final is not None and math.isfinite(final)
        capped.setdefault(r["seed"], {})[_ratio_key(r["learning_rate"], best)] = (
            min(final, r["initial_loss"]) if ok else r["initial_loss"])
    values = {seed: [by_ratio[k] for k in ratios] for seed, by_ratio in capped.items() if ratios <= set(by_ratio)}
    return {seed: statistics.fmean(v) - min(v) for seed, v in values.items()}


def _headroom_text(found: tuple[float, bool]) -> str:
    return ("≥ " if found[1] else "") + f"{found[0]:.3g}"


def claim_c(groups: Sequence[Group]) -> list[Comparison]:
    comparisons = []
    for group in groups:
        entries = {name: group.entry(name) for name in ("focus", "adamw", "signum")}
        if not all(e and len(e["learning_rates"]) > 1 and headroom(e) for e in entries.values()):
            continue
        focus = entries["focus"]
        for other in ("adamw", "signum"):
            room = headroom_outcome(headroom(focus), headroom(entries[other]))
            ratios = set.intersection(*({_ratio_key(lr, e["best_learning_rate"]) for lr in e["learning_rates"]}
                                        for e in (focus, entries[other])))
            where = f"focus vs {other} at {group.label}"
            text = f"headroom {_headroom_text(headroom(focus))} vs {_headroom_text(headroom(entries[other]))}"
            if len(ratios) < MIN_SHARED_RATIOS:
                sensitivity = Comparison(where, f"grids share {len(ratios)} LR ratios", NOT_SHOWN,
                                         f"grids share fewer than {MIN_SHARED_RATIOS} LR ratios")
            else:
                sensitivity = judge(where, paired(sensitivity_per_seed(group, other, ratios),
                                                  sensitivity_per_seed(group, "focus", ratios), lambda v: v),
                                    [focus, entries[other]])
            text += f", sensitivity {other} − focus {sensitivity.measured}"
            if room is None:
                comparisons.append(Comparison(where, text, NOT_SHOWN, NO_DIVERGENCE))
            elif room == sensitivity.outcome:
                comparisons.append(Comparison(where, text, room, sensitivity.reason))
            else:
                disagree = NOT_SHOWN not in (room, sensitivity.outcome)
                comparisons.append(Comparison(where, text, NOT_SHOWN, "the two measures disagree" * disagree))
    return comparisons


def _eigenvalues(row: dict[str, Any]) -> dict[float, float]:
    """A run's top Hessian eigenvalue by step, after step 0."""
    return {step: value for step, value in row["top_hessian_eigenvalue"] if step > 0}


def claim_d(groups: Sequence[Group]) -> list[Comparison]:
    comparisons = []
    for group in groups:
        focus, signum = group.at_best("focus"), group.at_best("signum")
        if not focus or not signum:
            continue
        if all("top_hessian_eigenvalue" in r for r in [*focus.values(), *signum.values()]):
            differences = {}
            for seed in sorted(set(focus) & set(signum)):
                mine, theirs = _eigenvalues(focus[seed]), _eigenvalues(signum[seed])
                shared = set(mine) & set(theirs)
                if shared:
                    differences[seed] = statistics.fmean(theirs[step] - mine[step] for step in shared)
            if differences:
                comparisons.append(judge(group.label, differences, [group.entry("focus"), group.entry("signum")]))
            continue
        # A summary without per-run eigenvalues: its seed means show the numbers but cannot decide.
        means = [dict(group.entry(name).get("top_hessian_eigenvalue") or []) for name in ("focus", "signum")]
        shared = sorted(step for step in set(means[0]) & set(means[1]) if step > 0)
        if shared:
            focus_mean, signum_mean = (statistics.fmean(m[step] for step in shared) for m in means)
            comparisons.append(Comparison(
                group.label, f"seed means over steps {shared[0]:g}-{shared[-1]:g}: Signum {signum_mean:.3g}, FOCUS "
                f"{focus_mean:.3g}", NOT_SHOWN, "no per-seed eigenvalues in the summary (rebuild it with "
                "--report_only)"))
    return comparisons


def claim_e(groups: Sequence[Group]) -> list[Comparison]:
    return loss_comparisons(groups, [("foco", "focus")], margin=EQUIVALENCE_MARGIN)


def claim_f(studies: Sequence[Study]) -> list[Comparison]:
    largest = [pair[1] for pair in (study.noise_pair() for study in studies) if pair]
    return loss_comparisons(largest, [("kfac", "fop"), ("adamw", "fop")])


def claim_g(groups: Sequence[Group]) -> list[Comparison]:
    return loss_comparisons(groups, [("muon", name) for name in ("focus", "foco", "kfac")])


def verdict(comparisons: Sequence[Comparison]) -> str:
    """holds / does not hold / not shown when every comparison agrees (with their common reason), else where
    each outcome occurred; pending when there is nothing to compare."""
    if not comparisons:
        return PENDING
    outcomes = list(dict.fromkeys(c.outcome for c in comparisons))
    if len(outcomes) == 1:
        reasons = {c.reason for c in comparisons}
        return outcomes[0] + (f": {reasons.pop()}" if len(reasons) == 1 and "" not in reasons else "")
    return "mixed: " + "; ".join(f"{o} in {', '.join(c.where for c in comparisons if c.outcome == o)}"
                                 for o in (HOLDS, FAILS, NOT_SHOWN) if o in outcomes)


CLAIMS = [
    ("(a) FOCUS/foco reach AdamW's loss in fewer steps",
     "AdamW's steps ÷ theirs to AdamW's target, geometric mean [95 %]", lambda s, g: claim_a(g)),
    ("(b) their advantage grows with gradient noise",
     "growth of the final-loss advantage over AdamW, small batch − large [95 %]", lambda s, g: claim_b(s)),
    ("(c) FOCUS tolerates larger LRs than AdamW and Signum",
     "headroom (largest stable LR ÷ best LR) and LR sensitivity, other − FOCUS [95 %]", lambda s, g: claim_c(g)),
    ("(d) FOCUS's sharpness stays lower than Signum's",
     "top Hessian eigenvalue (mean over steps after 0), Signum − FOCUS [95 %]", lambda s, g: claim_d(g)),
    ("(e) foco = FOCUS within seed noise",
     f"foco − FOCUS final eval loss [90 %], margin ±{EQUIVALENCE_MARGIN:g}", lambda s, g: claim_e(g)),
    ("(f) FOP beats K-FAC and AdamW at large batch",
     "final eval loss at the largest batch [95 %]", lambda s, g: claim_f(s)),
    ("(g) FOCUS, foco and K-FAC against Muon",
     "final eval loss, Muon − theirs [95 %] (holds: lower than Muon's)", lambda s, g: claim_g(g)),
]


def table(studies: Sequence[Study]) -> str:
    groups = [group for study in studies for group in study.groups]
    lines = ["| claim | comparisons | measurement (paired seeds, each optimizer at its best LR) | verdict |",
             "|---|---|---|---|"]
    total = 0
    for claim, quantity, decide in CLAIMS:
        comparisons = decide(studies, groups)
        total += len(comparisons)
        measured = quantity + ": " + "; ".join(f"{c.where}: {c.measured}" for c in comparisons) if comparisons else "-"
        lines.append(f"| {claim} | {len(comparisons)} | {measured} | {verdict(comparisons)} |")
    lines += ["", f"{total} comparisons. Each interval covers its own difference with 95 % (90 % for (e)), not "
              "jointly: where nothing differs, about one comparison in 20 lands on a side by chance."]
    return "\n".join(lines)


def _study_argument(text: str) -> tuple[str, Path]:
    name, sep, directory = text.partition("=")
    if not sep or not name or not directory:
        raise argparse.ArgumentTypeError(f"--study takes NAME=DIR (e.g. noise=docs/gpt2-nano-noise), got {text!r}")
    return name, Path(directory)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", type=_study_argument, action="append", default=[], metavar="NAME=DIR",
                        help="a study's output directory (with summary.json) under a name for the table; repeat")
    parser.add_argument("--noise", type=Path, help="short for --study noise=DIR")
    parser.add_argument("--length", type=Path, help="short for --study length=DIR")
    args = parser.parse_args(argv)
    named = [("noise", args.noise)] * bool(args.noise) + [("length", args.length)] * bool(args.length) + args.study
    if not named:
        parser.error("name at least one study: --study NAME=DIR (or --noise DIR, --length DIR)")
    names = [name for name, _ in named]
    if len(set(names)) != len(names):
        parser.error(f"study names must differ, got {names}")
    missing = [str(directory) for _, directory in named if not (directory / "summary.json").is_file()]
    if missing:
        parser.error(f"no summary.json in {', '.join(missing)}: write it with "
                     "`hf-foco compare STUDY.yaml --output_dir DIR --report_only`")
    try:
        studies = [study_from_summary(name, json.loads((directory / "summary.json").read_text()))
                   for name, directory in named]
        text = table(studies)
    except (ValueError, KeyError) as error:
        parser.error(f"not a study summary ({type(error).__name__}: {error}); rewrite it with "
                     "`hf-foco compare STUDY.yaml --output_dir DIR --report_only`")
    print(text)


if __name__ == "__main__":
    main()
