"""The README's verdict rules (scripts/verdict.py) on hand-made summaries: Student's t against its published
quantiles, the paired rule, and each claim, including cases where the old unpaired rules decided otherwise."""

from __future__ import annotations

import importlib.util
import math
import re
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from hf_foco.compare.analysis import best_learning_rate, largest_stable_lr, selection_seeds

ROOT = Path(__file__).parents[1]
_spec = importlib.util.spec_from_file_location("verdict", ROOT / "scripts" / "verdict.py")
verdict = sys.modules["verdict"] = importlib.util.module_from_spec(_spec)  # registered: it defines dataclasses
_spec.loader.exec_module(verdict)


# -- hand-made summaries ---------------------------------------------------------------------------------------

def row(optimizer, seed, loss, lr=1e-3, group="g", to_target=None, steps=100, initial=8.0, eigen=None, **extra):
    """One per-run row of summary.json (the fields the verdict reads)."""
    return {"group": group, "optimizer": optimizer, "learning_rate": lr, "seed": seed, "final_eval_loss": loss,
            "steps_to_target": to_target, "steps": steps, "initial_loss": initial, "diverged": False,
            "top_hessian_eigenvalue": eigen or [], **extra}


def rows_of(optimizer, losses, **kwargs):
    return [row(optimizer, seed, loss, **kwargs) for seed, loss in enumerate(losses)]


def summary(rows, tokens=None, target=5.0):
    """summary.json around ``rows``: per group and optimizer the grid, best LR, largest stable LR and selection
    seeds, by the analysis' own rules."""
    groups = {}
    for group in dict.fromkeys(r["group"] for r in rows):
        own = [r for r in rows if r["group"] == group]
        entries = {}
        for name in dict.fromkeys(r["optimizer"] for r in own):
            mine = [r for r in own if r["optimizer"] == name]
            entries[name] = {"learning_rates": sorted({r["learning_rate"] for r in mine}),
                             "best_learning_rate": best_learning_rate(mine),
                             "largest_stable_lr": largest_stable_lr(mine), "selection_seeds": selection_seeds(mine)}
        groups[group] = {"tokens_per_step": (tokens or {}).get(group, 512), "target_eval_loss": target,
                         "optimizers": entries}
    return {"groups": groups, "runs": rows}


def groups_of(rows, name="s", **kwargs):
    return verdict.study_from_summary(name, summary(rows, **kwargs)).groups


def unpaired_old_rule(a, b):
    """The old rule: difference of seed means, 'within noise' when |Δ| ≤ 2 sqrt(sd_a²/n_a + sd_b²/n_b)."""
    delta = statistics.fmean(a) - statistics.fmean(b)
    se = math.sqrt(statistics.variance(a) / len(a) + statistics.variance(b) / len(b))
    return delta, se


# -- Student's t and the interval --------------------------------------------------------------------------------

@pytest.mark.parametrize("n, quantile", [(2, 12.71), (3, 4.30), (4, 3.18), (5, 2.78), (6, 2.57), (8, 2.36),
                                         (10, 2.26)])
def test_t_quantiles_match_the_published_table(n, quantile):
    """Two-sided 95 % quantiles of Student's t with n - 1 degrees of freedom, as tabulated (2 decimals)."""
    assert verdict.t_critical(n - 1, 0.95) == pytest.approx(quantile, abs=0.005)


def test_t_one_sided_95_quantiles_and_the_normal_limit():
    assert verdict.t_critical(3, 0.90) == pytest.approx(2.35, abs=0.005)
    assert verdict.t_critical(4, 0.90) == pytest.approx(2.13, abs=0.005)
    assert verdict.t_critical(4000, 0.95) == pytest.approx(1.960, abs=0.002)  # the normal's 1.95996
    # df = 1 is the Cauchy distribution: P(|T| <= t) = 2 atan(t) / pi in closed form.
    assert verdict.t_mass(3.0, 1) == pytest.approx(2 * math.atan(3.0) / math.pi)
    assert verdict.t_mass(2.0, 2) == pytest.approx(2.0 / math.sqrt(2 + 4.0))  # df = 2: t / sqrt(2 + t²)


def test_interval_and_the_three_outcomes():
    found = verdict.interval([1.0, 3.0])  # mean 2, sd sqrt(2), se 1, t(1) = 12.706
    assert (found.mean, found.n) == (2.0, 2)
    assert found.low == pytest.approx(2 - 12.7062, abs=1e-3) and found.high == pytest.approx(2 + 12.7062, abs=1e-3)
    assert verdict.side(found) == verdict.NOT_SHOWN
    assert verdict.side(verdict.interval([1.0, 1.1, 0.9])) == verdict.HOLDS
    assert verdict.side(verdict.interval([-1.0, -1.1, -0.9])) == verdict.FAILS
    assert verdict.interval([1.0]) is None


def test_equivalence_needs_the_90_interval_inside_the_margin():
    assert verdict.equivalence(verdict.interval([0.005, -0.004, 0.001], 0.90)) == verdict.HOLDS
    assert verdict.equivalence(verdict.interval([0.10, 0.11, 0.12], 0.90)) == verdict.FAILS
    assert verdict.equivalence(verdict.interval([0.0, 0.02], 0.90)) == verdict.NOT_SHOWN  # straddles +0.03


def test_a_claim_over_several_comparisons():
    c = verdict.Comparison
    assert verdict.verdict([]) == verdict.PENDING
    assert verdict.verdict([c("x", "", verdict.HOLDS), c("y", "", verdict.HOLDS)]) == "holds"
    assert verdict.verdict([c("x", "", verdict.NOT_SHOWN, "why"), c("y", "", verdict.NOT_SHOWN, "why")]) == \
        "not shown: why"
    assert verdict.verdict([c("x", "", verdict.HOLDS), c("y", "", verdict.NOT_SHOWN), c("z", "", verdict.HOLDS),
                            c("w", "", verdict.FAILS)]) == "mixed: holds in x, z; does not hold in w; not shown in y"


# -- the claims, and where the new rule and the old one disagree -------------------------------------------------

def test_e_equivalence_a_wide_interval_is_not_shown_where_the_old_rule_said_holds():
    """One foco seed 0.3 nats behind: the old rule (|Δ| <= 2 se of seed means) called it 'within noise'."""
    focus, foco = [5.46, 5.42], [5.77, 5.44]
    delta, se = unpaired_old_rule(foco, focus)
    assert abs(delta) <= 2 * se  # the old verdict: holds
    (wide,) = verdict.claim_e(groups_of(rows_of("focus", focus) + rows_of("foco", foco)))
    assert wide.outcome == verdict.NOT_SHOWN and wide.measured.startswith("+0.165 [")
    # Four seeds each within 0.01: the 90 % interval lies inside ±0.03.
    (close,) = verdict.claim_e(groups_of(rows_of("focus", [5.0, 5.2, 4.9, 5.1]) +
                                         rows_of("foco", [5.005, 5.196, 4.902, 5.097])))
    d = [0.005, -0.004, 0.002, -0.003]
    half = 2.353 * statistics.stdev(d) / 2  # t(3) at 90 % two-sided, n = 4
    assert close.outcome == verdict.HOLDS and f"{statistics.fmean(d) + half:+.3f}]" in close.measured


def test_f_a_paired_interval_decides_where_the_unpaired_rule_could_not():
    """Seeds differ by 0.4 nats, FOP is 0.05 below K-FAC and AdamW on every one: the seed-mean difference
    is within 2 se, the paired differences are not."""
    seeds = [5.0, 5.4, 4.8, 5.2]
    kfac, fop = [s + 0.05 for s in seeds], [s + d for s, d in zip(seeds, (0.0, 0.003, -0.002, 0.001))]
    delta, se = unpaired_old_rule(fop, kfac)
    assert abs(delta) < 2 * se  # the old verdict: not shown
    rows = []
    for group, steps in (("bx1", 800), ("bx8", 100)):  # 512 and 4096 tokens per step: the same budget
        rows += rows_of("kfac", kfac, group=group, steps=steps) + rows_of("fop", fop, group=group, steps=steps)
        rows += rows_of("adamw", [s + 0.3 for s in seeds], group=group, steps=steps)
    study = verdict.study_from_summary("noise", summary(rows, tokens={"bx1": 512, "bx8": 4096}))
    comparisons = verdict.claim_f([study])
    assert [c.where for c in comparisons] == ["kfac − fop at noise 4096 tok/step", "adamw − fop at noise 4096 tok/step"]
    assert [c.outcome for c in comparisons] == [verdict.HOLDS, verdict.HOLDS]
    # Only a study whose groups share a token budget at different batch sizes has a "largest batch".
    for r in rows:
        r["steps"] = 800 if r["group"] == "bx1" else 50  # 409,600 vs 204,800 tokens: not a noise study
    assert verdict.claim_f([verdict.study_from_summary("noise", summary(rows, tokens={"bx1": 512, "bx8": 4096}))]) == []


def test_a_per_comparison_verdicts_where_the_old_rule_failed_the_whole_claim():
    """FOCUS reaches AdamW's target in about 0.8x its steps on every seed in both groups; foco misses on one
    seed per group. The old rule (both optimizers win on every seed of a group, in every group) said 'does
    not hold'; the new one decides each comparison."""
    rows = []
    for group in ("g1", "g2"):
        for seed, steps in enumerate((80.0, 90.0, 100.0, 85.0)):
            rows += [row("adamw", seed, 5.0, group=group, to_target=steps),
                     row("focus", seed, 4.9, group=group, to_target=steps * 0.8 * (1 + 0.01 * seed)),
                     row("foco", seed, 4.9, group=group, to_target=None if seed == 3 else steps * 0.8)]
    comparisons = verdict.claim_a(groups_of(rows, tokens={"g1": 512, "g2": 4096}))
    assert {c.where: c.outcome for c in comparisons} == {
        "focus at s 512 tok/step": "holds", "foco at s 512 tok/step": "not shown",
        "focus at s 4096 tok/step": "holds", "foco at s 4096 tok/step": "not shown"}
    ratios = [math.log(1 / (0.8 * (1 + 0.01 * s))) for s in range(4)]  # AdamW's steps / FOCUS's, per seed
    assert comparisons[0].measured.startswith(f"{math.exp(statistics.fmean(ratios)):.2f}x [")
    assert "missed 1" in comparisons[1].measured
    assert verdict.verdict(comparisons) == ("mixed: holds in focus at s 512 tok/step, focus at s 4096 tok/step; "
                                            "not shown in foco at s 512 tok/step, foco at s 4096 tok/step")


def test_a_missed_target_cannot_make_a_claim_hold():
    """foco reaches AdamW's target in half its steps on 7 of 8 seeds and misses on seed 3: counted at its last
    step (a bound) the interval lies above 1, but a bound flatters the optimizer that missed."""
    rows = [row("adamw", seed, 5.0, to_target=100.0 - 0.5 * seed) for seed in range(8)]
    rows += [row("foco", seed, 4.9, to_target=None if seed == 3 else 50.0) for seed in range(8)]
    ratios = [math.log((100.0 - 0.5 * s) / (100.0 if s == 3 else 50.0)) for s in range(8)]
    assert verdict.side(verdict.interval(ratios)) == verdict.HOLDS  # the interval alone would say holds
    (found,) = verdict.claim_a(groups_of(rows))
    assert found.outcome == verdict.NOT_SHOWN and found.reason == "a missed target bounds the interval"
    rows[8 + 3]["steps_to_target"] = 50.0  # reached after all
    (found,) = verdict.claim_a(groups_of(rows))
    assert found.outcome == verdict.HOLDS


def test_b_growth_with_noise_paired_across_batch_sizes():
    """Advantage over AdamW per seed: 0.2 at the small batch, 0.0 at the large one (seed effects cancel)."""
    rows, offsets = [], [0.0, 0.3, -0.2]
    for group, advantage, steps in (("bx1", 0.2, 800), ("bx8", 0.0, 100)):  # the same 409,600 tokens
        rows += rows_of("adamw", [5.0 + o for o in offsets], group=group, steps=steps)
        for name in ("focus", "foco"):
            rows += rows_of(name, [5.0 + o - advantage + 0.01 * s for s, o in enumerate(offsets)], group=group,
                            steps=steps)
    study = verdict.study_from_summary("noise", summary(rows, tokens={"bx1": 512, "bx8": 4096}))
    comparisons = verdict.claim_b([study])
    assert [c.outcome for c in comparisons] == ["holds", "holds"]
    assert comparisons[0].measured.startswith("+0.200 [+0.200, +0.200]")
    one_batch = verdict.study_from_summary("length", summary([r for r in rows if r["group"] == "bx1"]))
    assert verdict.claim_b([one_batch]) == []


def grid_rows(optimizer, losses_by_lr, diverged_lrs=(), seeds=(0, 1)):
    rows = []
    for lr, loss in losses_by_lr.items():
        for seed in seeds:
            rows.append(row(optimizer, seed, loss + 0.02 * seed, lr=lr, initial=8.0,
                            diverged=lr in diverged_lrs))
    return rows


def test_c_no_divergence_is_not_shown_and_a_reached_divergence_decides():
    """FOCUS: best 2e-3, stable to 1.6e-2 (headroom 8); AdamW: best 1e-3, diverges above 2e-3 (headroom 2);
    Signum: best 1e-3, diverges above 4e-3 (headroom 4)."""
    focus = {1e-3: 4.3, 2e-3: 4.0, 4e-3: 4.1, 8e-3: 4.2, 1.6e-2: 4.4}
    adamw = {5e-4: 4.5, 1e-3: 4.0, 2e-3: 4.6, 4e-3: 9.0}
    signum = {5e-4: 4.4, 1e-3: 4.0, 2e-3: 4.5, 4e-3: 4.7, 8e-3: 9.0}
    rows = grid_rows("focus", focus) + grid_rows("adamw", adamw, {4e-3}) + grid_rows("signum", signum, {8e-3})
    comparisons = verdict.claim_c(groups_of(rows))
    # FOCUS's headroom is a bound (>= 8), above both others' numbers: it decides. Sensitivity over the ratios
    # to the best LR both grids ran, with AdamW {1/2, 1, 2, 4}: FOCUS's capped losses there 4.3, 4.0, 4.1,
    # 4.2 (+0.02 on seed 1) -> 0.15 on both seeds; AdamW's 4.5, 4.0, 4.6, 8.0 (9.0 capped at the initial
    # 8.0) -> 1.275, and 4.52, 4.02, 4.62, 8.0 -> 1.27 on seed 1.
    assert [c.outcome for c in comparisons] == ["holds", "holds"]
    d = [1.275 - 0.15, 1.27 - 0.15]
    half = 12.7062 * statistics.stdev(d) / math.sqrt(2)
    mean = statistics.fmean(d)
    measured = re.fullmatch(r"headroom ≥ 8 vs 2, sensitivity adamw − focus (\S+) \[(\S+), (\S+)\] \(n 2\)",
                            comparisons[0].measured)
    assert [float(x) for x in measured.groups()] == pytest.approx([mean, mean - half, mean + half], abs=6e-4)
    # Nothing diverged anywhere: every headroom is a bound, and the claim is untested whatever the sensitivity.
    calm = [dict(r, diverged=False, final_eval_loss=min(r["final_eval_loss"], 5.0)) for r in rows]
    comparisons = verdict.claim_c(groups_of(calm))
    assert {c.outcome for c in comparisons} == {"not shown"}
    assert verdict.verdict(comparisons) == "not shown: no divergence reached"


def test_d_sharpness_per_seed_where_seed_means_lower_at_every_step_are_not_enough():
    """Seed means: FOCUS 12.5 and 14.0 against Signum 17.0 and 18.5, lower at every step (the old rule's
    'holds'); but seed 1 has FOCUS above Signum, so the paired interval straddles 0."""
    eigen = {("focus", 0): [[0, 50.0], [100, 10.0], [200, 12.0]], ("focus", 1): [[0, 60.0], [100, 15.0], [200, 16.0]],
             ("signum", 0): [[0, 50.0], [100, 20.0], [200, 22.0]], ("signum", 1): [[0, 60.0], [100, 14.0], [200, 15.0]]}
    rows = [row(opt, seed, 5.0, eigen=values) for (opt, seed), values in eigen.items()]
    (found,) = verdict.claim_d(groups_of(rows))
    assert found.outcome == verdict.NOT_SHOWN and found.measured.startswith("+4.500 [")  # (+10, -1) / 2
    rows = []
    for seed, gap in enumerate((1.0, 1.2, 0.9, 1.1)):  # Signum's 1 above FOCUS's on each of 4 seeds
        rows.append(row("focus", seed, 5.0, eigen=[[100, 10.0 + seed], [200, 11.0 - seed]]))
        rows.append(row("signum", seed, 5.0, eigen=[[100, 10.0 + seed + gap], [200, 11.0 - seed + gap]]))
    (found,) = verdict.claim_d(groups_of(rows))
    assert found.outcome == verdict.HOLDS and "(n 4)" in found.measured


def test_d_a_summary_without_per_run_eigenvalues_shows_its_seed_means_and_does_not_decide():
    rows = [{k: v for k, v in row(opt, seed, 5.0).items() if k != "top_hessian_eigenvalue"}
            for opt in ("focus", "signum") for seed in (0, 1)]
    made = summary(rows)
    made["groups"]["g"]["optimizers"]["focus"]["top_hessian_eigenvalue"] = [[0, 9.0], [192, 3.0], [384, 4.0]]
    made["groups"]["g"]["optimizers"]["signum"]["top_hessian_eigenvalue"] = [[0, 9.0], [192, 5.0], [384, 6.0]]
    (found,) = verdict.claim_d(verdict.study_from_summary("length", made).groups)
    assert found.outcome == verdict.NOT_SHOWN and "Signum 5.5, FOCUS 3.5" in found.measured
    assert "no per-seed eigenvalues" in found.reason


def test_extra_seeds_at_the_best_lr_pair_only_shared_seeds_and_count_as_held_out():
    """AdamW and Muon ran seeds 0-1 across the grid and 0-3 at the best LR; FOCUS ran 0-1 only, foco 0-3."""
    rows, noise = [], [0.0, 0.08, -0.03, 0.02]
    for name, seeds_at_best in (("muon", 4), ("focus", 2), ("foco", 4), ("adamw", 4)):
        rows += [row(name, seed, 5.5 + 0.01 * seed, lr=2e-3) for seed in (0, 1)]
        rows += [row(name, seed, 5.0 + 0.1 * seed + (0.0 if name == "muon" else noise[seed] - 0.1), lr=1e-3)
                 for seed in range(seeds_at_best)]
    groups = groups_of(rows)
    assert groups[0].entry("foco")["selection_seeds"] == [0, 1]
    focus, foco = verdict.claim_g(groups)  # no K-FAC runs: no comparison for it
    # Muon − FOCUS per seed 0.1 - noise: (0.1, 0.02) on 2 shared seeds, t(1) = 12.7: not shown;
    # Muon − foco: (0.1, 0.02, 0.13, 0.08) on 4, 2 of them held out from both LR choices: holds.
    assert "(n 2)" in focus.measured and "(n 4, 2 held out)" in foco.measured
    assert (focus.outcome, foco.outcome) == ("not shown", "holds")


def test_muon_row_is_pending_until_muon_runs_exist():
    rows = rows_of("adamw", [5.0, 5.1]) + rows_of("focus", [4.9, 5.0])
    assert verdict.claim_g(groups_of(rows)) == []
    assert "| (g) FOCUS, foco and K-FAC against Muon | 0 | - | pending: no runs yet |" in \
        verdict.table([verdict.study_from_summary("s", summary(rows))])


# -- the script --------------------------------------------------------------------------------------------------

def test_the_table_from_the_committed_summaries():
    out = subprocess.run([sys.executable, "scripts/verdict.py", "--noise", "docs/gpt2-nano-noise", "--length",
                          "docs/gpt2-nano-length"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    lines = out.splitlines()
    assert lines[0].startswith("| claim | comparisons |") and len([x for x in lines if x.startswith("| (")]) == 7
    assert "| (c) FOCUS tolerates larger LRs than AdamW and Signum | 4 |" in out
    assert "not shown: no divergence reached |" in out  # nothing diverged in the committed grids
    counts = [int(x.split(" | ")[1]) for x in lines if x.startswith("| (")]
    assert lines[-1].startswith(f"{sum(counts)} comparisons.")


@pytest.mark.parametrize("argv, message", [
    (["--study", "noise"], "NAME=DIR"),
    (["--study", "x=/nonexistent"], "no summary.json in /nonexistent"),
    ([], "name at least one study"),
    (["--noise", "docs/gpt2-nano-noise", "--study", "noise=docs/gpt2-nano-length"], "study names must differ"),
])
def test_bad_arguments_get_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        verdict.main(argv)
    assert exit_.value.code == 2 and message in capsys.readouterr().err
