"""The study runner: report arithmetic on hand-made logs (divergence, spikes, steps to target, LR sensitivity,
grid extension), study parsing, the runner on a fake launcher, sharpness, and a mini study end to end."""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from transformers import TrainerControl, TrainerState

from hf_foco.compare.analysis import (
    AnalysisConfig,
    RunLog,
    analyse_run,
    divergence_reason,
    grid_extension,
    nan_guard_skips,
    steps_to_target,
    summarize,
)
from hf_foco.compare.study import Study
from hf_foco.rundir import RESIDUAL_KEY
from hf_foco.trainer import StabilityCallback
from hf_foco.trainer.sharpness import lanczos_top_eigenpair, top_hessian_eigenpair


def history(train: dict[int, float], evals: dict[int, float] | None = None) -> list[dict]:
    """A Trainer-style log_history from {step: train loss} and {step: eval loss}."""
    logs = [{"step": s, "loss": v, "grad_norm": 1.0 + s / 100, "learning_rate": 1e-3} for s, v in train.items()]
    logs += [{"step": s, "eval_loss": v} for s, v in (evals or {}).items()]
    return sorted(logs, key=lambda e: e["step"])


def run(name="r", optimizer="adamw", lr=1e-3, seed=0, train=None, evals=None, **kwargs) -> RunLog:
    train = train if train is not None else {s: 5.0 - s / 50 for s in range(10, 101, 10)}
    return RunLog(name=name, group="g", optimizer=optimizer, learning_rate=lr, seed=seed,
                  log_history=history(train, evals), tokens_per_step=512, **kwargs)


# -- divergence ---------------------------------------------------------------------------------------

def test_healthy_run_has_not_diverged():
    assert divergence_reason(run()) is None


def test_crash_nan_and_late_rise_are_divergence_but_an_early_recovered_spike_is_not():
    assert divergence_reason(run(crashed=True)) == "crashed"
    nan_end = {10: 5.0, 20: 4.0, 30: math.nan}
    assert divergence_reason(run(train=nan_end)) == "non-finite final loss"
    assert divergence_reason(run(evals={100: math.inf})) == "non-finite final loss"
    # Initial 5.0; in the last quarter (steps >= 75) a loss of 5.5 is above it.
    late_rise = {10: 5.0, 50: 3.0, 80: 5.5, 100: 4.0}
    assert "above the initial" in divergence_reason(run(train=late_rise))
    # The same excursion before the last quarter, recovered from: a spike, not a divergence.
    early = {10: 5.0, 30: 5.5, 50: 3.0, 80: 2.9, 100: 2.8}
    assert divergence_reason(run(train=early)) is None
    assert divergence_reason(run(train=early), late_fraction=0.8) is not None


def test_the_study_and_the_stability_monitor_apply_one_spike_rule_and_one_divergence_rule(tmp_path):
    """Feed the same logged losses to the live monitor and to the study's analysis: same spikes, same verdict."""
    noise = [0.02, -0.03, 0.01, 0.0, -0.01, 0.03, -0.02, 0.01]
    losses = [4.0 - 0.01 * i + noise[i % 8] for i in range(40)]
    losses[20] += 1.0  # a spike (z ~ 50 against a std of ~0.03), recovered from
    losses[30] = 4.5   # late in the run (last quarter: steps >= 30) and above the first loss 4.02: diverged
    monitor, state = StabilityCallback(), TrainerState()
    for step, loss in enumerate(losses, start=1):
        state.global_step = step
        state.log_history.append({"loss": loss, "step": step})
        monitor.on_log(None, state, TrainerControl(), logs={"loss": loss})
    summary = monitor.write_summary(SimpleNamespace(output_dir=str(tmp_path)), state)
    row = analyse_run(RunLog("r", "g", "adamw", 1e-3, 0, log_history=state.log_history))
    assert [s["step"] for s in summary["loss_spikes"]] == [21, 31] and row["loss_spikes"] == 2
    assert summary["loss_divergence"] == row["divergence_reason"] == "loss 4.5 at step 31 above the initial 4.02"
    losses[30] = 3.7  # no late excursion above the first loss: neither calls it diverged
    state.log_history[30]["loss"] = 3.7
    assert monitor.write_summary(SimpleNamespace(output_dir=str(tmp_path)), state)["loss_divergence"] is None
    assert divergence_reason(RunLog("r", "g", "adamw", 1e-3, 0, log_history=state.log_history)) is None


# -- stability summaries ---------------------------------------------------------------------------------

def test_nan_guard_skips_read_from_the_monitor_summary():
    assert nan_guard_skips({"num_skipped_steps": 3, "skipped_steps": [4, 5, 9]}) == 3
    assert nan_guard_skips({"skipped_steps": [4, 5]}) == 2
    assert nan_guard_skips({}) == 0


# -- steps to target, best LR, speedups ---------------------------------------------------------------------

def evals_reaching(final: float, at_step: int, last: int = 100) -> dict[int, float]:
    """Eval every 10 steps, falling linearly from 6.0 to ``final`` at ``at_step``, flat afterwards."""
    return {s: 6.0 - (6.0 - final) * min(s, at_step) / at_step for s in range(10, last + 1, 10)}


def test_steps_to_target_interpolate_between_the_evals_that_straddle_it():
    logs = history({}, {0: 8.0, 10: 5.0, 20: 4.0, 30: 3.5, 40: 3.4})
    assert steps_to_target(logs, 3.5) == 30  # an eval exactly at the target
    assert steps_to_target(logs, 4.5) == pytest.approx(15.0)  # halfway from 5.0 (step 10) to 4.0 (step 20)
    assert steps_to_target(logs, 3.45) == pytest.approx(35.0)
    assert steps_to_target(logs, 6.0) == pytest.approx(10 * 2 / 3)  # 8.0 -> 5.0 over steps 0-10
    assert steps_to_target(logs, 9.0) == 0  # the first eval is already there
    assert steps_to_target(logs, 3.0) is None


def test_group_summary_target_best_lr_speedup_and_stability():
    runs = [
        # AdamW: lr 1e-3 is best (seed mean 3.05); the target is the loss both its seeds reach there (3.1).
        run("a1s0", "adamw", 1e-3, 0, evals=evals_reaching(3.0, 100)),
        run("a1s1", "adamw", 1e-3, 1, evals=evals_reaching(3.1, 100)),
        run("a3s0", "adamw", 3e-3, 0, evals=evals_reaching(2.9, 100)),  # the best single run, at a worse LR
        run("a3s1", "adamw", 3e-3, 1, evals=evals_reaching(3.3, 100)),
        # foco: lr 1e-2 has the lowest loss but one seed diverged, so lr 3e-3 is its best LR.
        run("f3s0", "foco", 3e-3, 0, evals=evals_reaching(2.8, 50)),
        run("f3s1", "foco", 3e-3, 1, evals=evals_reaching(2.9, 80)),
        run("f9s0", "foco", 1e-2, 0, evals=evals_reaching(2.5, 40)),
        run("f9s1", "foco", 1e-2, 1, crashed=True, stability={"num_skipped_steps": 4}),
        # lion reaches the target with one seed only.
        run("l1s0", "lion", 1e-4, 0, evals=evals_reaching(2.9, 20)),
        run("l1s1", "lion", 1e-4, 1, evals=evals_reaching(3.15, 100)),
    ]
    summary = summarize(runs, AnalysisConfig())
    group = summary["groups"]["g"]
    assert group["target_eval_loss"] == pytest.approx(3.1) and group["reference_run"] == "a1s1"
    # AdamW seed 0 reaches 3.1 between step 90 (6 - 3 * 0.9 = 3.3) and 100 (3.0); seed 1 at step 100.
    reference = (90 + 10 * 0.2 / 0.3 + 100) / 2
    assert group["reference_steps"] == pytest.approx(reference)
    adamw, foco, lion = (group["optimizers"][k] for k in ("adamw", "foco", "lion"))
    assert adamw["best_learning_rate"] == 1e-3 and foco["best_learning_rate"] == 3e-3
    assert adamw["missed"] == 0  # tuned AdamW reaches its own target on every seed
    # foco seed 0 evals: step 40 -> 6 - 3.2 * 0.8 = 3.44, step 50 -> 2.8: 40 + 10 * 0.34 / 0.64.
    # foco seed 1 evals: step 70 -> 6 - 3.1 * 7 / 8 = 3.2875, step 80 -> 2.9: 70 + 10 * 0.1875 / 0.3875.
    steps = [40 + 10 * 0.34 / 0.64, 70 + 10 * 0.1875 / 0.3875]
    expected = [reference / steps[0], reference / steps[1]]
    assert foco["speedup"]["mean"] == pytest.approx(sum(expected) / 2)
    assert foco["speedup"]["std"] == pytest.approx(abs(expected[0] - expected[1]) / math.sqrt(2))
    assert foco["steps_to_target"]["min"] == pytest.approx(steps[0]) and foco["missed"] == 0
    assert foco["tokens_to_target"]["mean"] == pytest.approx(512 * sum(steps) / 2)  # 512 tokens per step
    # lion: seed 0 between step 10 (4.45) and 20 (2.9): 10 + 10 * 1.35 / 1.55; seed 1 misses -> counts 1.0.
    lion_steps = 10 + 10 * 1.35 / 1.55
    assert lion["speedup"]["mean"] == pytest.approx((reference / lion_steps + 1.0) / 2) and lion["missed"] == 1
    # Stability over all of foco's runs: the crash counts as a divergence; NaN-guard skips add up.
    assert (foco["diverged"], foco["runs"], foco["nan_guard_skips"]) == (1, 4, 4)
    assert adamw["speedup"]["mean"] == pytest.approx((reference / (90 + 10 * 0.2 / 0.3) + reference / 100) / 2)
    rows = {r["name"]: r for r in summary["runs"]}
    assert rows["f9s1"]["divergence_reason"] == "crashed" and rows["f9s1"]["steps_to_target"] is None


def test_seeds_added_at_the_best_lr_do_not_move_it_and_every_run_keeps_its_eigenvalues():
    """Seeds 0-1 at three LRs, seeds 2-3 at 2e-3 only. On seeds 0-1, 2e-3 is best (4.0 against 4.1); with the
    added seeds' 4.6 its mean over all four would be 4.3, and 1e-3 would win on a different seed set."""
    finals = {(1e-3, 0): 4.1, (1e-3, 1): 4.1, (2e-3, 0): 3.9, (2e-3, 1): 4.1, (4e-3, 0): 4.5, (4e-3, 1): 4.7,
              (2e-3, 2): 4.6, (2e-3, 3): 4.6}
    runs = [run(f"f{lr}-{seed}", "focus", lr, seed, evals={0: 8.0, 100: loss}) for (lr, seed), loss in finals.items()]
    runs[0].log_history.append({"step": 50, "top_hessian_eigenvalue": 12.5})
    summary = summarize(runs)
    entry = summary["groups"]["g"]["optimizers"]["focus"]
    assert entry["best_learning_rate"] == 2e-3 and entry["bracketed"]
    assert entry["selection_seeds"] == [0, 1] and entry["seeds_at_best_lr"] == [0, 1, 2, 3]
    assert entry["final_eval_loss"]["n"] == 4 and entry["final_eval_loss"]["mean"] == pytest.approx(4.3)
    # LR sensitivity on the selection seeds: means 4.1, 4.0, 4.6 -> (0.1 + 0 + 0.6) / 3.
    assert entry["lr_sensitivity"] == pytest.approx(0.7 / 3)
    rows = {r["name"]: r for r in summary["runs"]}
    assert rows["f0.001-0"]["top_hessian_eigenvalue"] == [[50, 12.5]] and rows["f0.002-2"]["top_hessian_eigenvalue"] == []


# -- LR sensitivity, largest stable LR, grid extension --------------------------------------------------------

def row(lr: float, final: float | None, diverged: bool = False, initial: float = 8.0, seed: int = 0) -> dict:
    """The fields of an ``analyse_run`` row that the LR rules read."""
    return {"learning_rate": lr, "final_eval_loss": final, "diverged": diverged, "initial_loss": initial,
            "seed": seed}


def test_lr_sensitivity_and_largest_stable_lr_on_hand_made_logs():
    # Initial eval loss 8.0 (eval_on_start). lr 1e-3: 5.0, 5.2 -> 5.1; lr 2e-3: 4.0, 4.2 -> 4.1 (best);
    # lr 4e-3: one seed NaN (counts as 8.0), one ends at 9.0 (capped at 8.0) -> 8.0; both diverged.
    finals = {1e-3: [5.0, 5.2], 2e-3: [4.0, 4.2], 4e-3: [math.nan, 9.0]}
    runs = [run(f"a{lr}-{seed}", "adamw", lr, seed, train={10: 7.0, 50: 6.0, 100: loss},
                evals={0: 8.0, 100: loss}) for lr, losses in finals.items() for seed, loss in enumerate(losses)]
    entry = summarize(runs)["groups"]["g"]["optimizers"]["adamw"]
    assert entry["lr_sensitivity"] == pytest.approx(((5.1 - 4.1) + 0.0 + (8.0 - 4.1)) / 3)
    assert entry["largest_stable_lr"] == 2e-3 and entry["diverged"] == 2
    assert entry["best_learning_rate"] == 2e-3 and entry["bracketed"]
    assert entry["learning_rates"] == [1e-3, 2e-3, 4e-3]
    # Every LR equally good: sensitivity 0; nothing diverged: the top of the grid is the largest stable LR.
    flat = [run(f"f{lr}", "adamw", lr, 0, evals={0: 8.0, 100: 5.0}) for lr in (1e-3, 2e-3)]
    entry = summarize(flat)["groups"]["g"]["optimizers"]["adamw"]
    assert entry["lr_sensitivity"] == 0.0 and entry["largest_stable_lr"] == 2e-3 and not entry["bracketed"]


@pytest.mark.parametrize("rows, expected", [
    ([row(1e-3, 5.0), row(2e-3, 4.0), row(4e-3, 4.5)], None),              # bracketed
    ([row(1e-3, 5.0), row(2e-3, 4.5), row(4e-3, 4.0)], 8e-3),              # best at the top: one more above
    ([row(1e-3, 4.0), row(2e-3, 4.5), row(4e-3, 5.0)], 5e-4),              # best at the bottom: one below
    ([row(1e-3, 5.0), row(2e-3, 4.0), row(4e-3, 3.0, diverged=True)], None),  # bracketed by a divergence
    ([row(1e-3, 5.0), row(4e-3, 4.0, seed=0), row(4e-3, 4.4, diverged=True, seed=1)], 2.5e-4),  # only 1e-3 is
    ([row(1e-3, 7.0, True), row(2e-3, None, True)], 5e-4),                  # all diverged: go lower
    ([row(1e-3, 5.0), row(3e-3, 4.0)], 9e-3),                                # the grid's own ratio, x3
    ([row(1e-3, 5.0), row(3.16e-3, 4.0)], 0.009986),                         # rounded to 4 digits
    ([row(1e-3, 5.0, seed=0), row(1e-3, 5.4, seed=1), row(2e-3, 5.1, seed=0), row(2e-3, 5.2, seed=1)], 4e-3),
])
def test_grid_extension_decisions(rows, expected):
    """The last-but-one case: lr 4e-3 diverged on one seed, so 1e-3 is the only eligible (and bottom) LR.
    The last: seed means 5.2 and 5.15, so the top LR is best though seed 0 alone prefers the bottom."""
    assert grid_extension(rows) == (pytest.approx(expected) if expected else None)


def test_grid_extension_needs_two_learning_rates(tmp_path):
    with pytest.raises(ValueError, match="two learning rates"):
        grid_extension([row(1e-3, 5.0)])
    path = write_study(tmp_path, {"block_size": 8, "max_steps": 10}, {
        "max_grid_extensions": 1, "optimizers": {"adamw": {"learning_rates": [1.0e-3]}}})
    with pytest.raises(ValueError, match="fewer than 2 learning_rates"):
        Study.from_yaml(path)


# -- study files ----------------------------------------------------------------------------------------------

def write_study(tmp_path: Path, recipe: dict, study: dict) -> Path:
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({"recipe": "recipe.yaml", **study}))
    return path


def test_study_expands_the_grid_and_keeps_the_token_budget(tmp_path):
    recipe = {"block_size": 64, "per_device_train_batch_size": 4, "max_steps": 160, "eval_steps": 40,
              "logging_steps": 10}
    path = write_study(tmp_path, recipe, {
        "name": "s", "seeds": [0, 1], "batch_size_multipliers": [1, 4], "output_dir": str(tmp_path / "out"),
        "optimizers": {"adamw": {"learning_rates": ["1e-3", 3.0e-3]},
                       "lion": {"learning_rates": [1.0e-4], "overrides": {"weight_decay": 0.5}}}})
    runs = Study.from_yaml(path).runs()
    assert len(runs) == 2 * 2 * (2 + 1)  # batch sizes x seeds x (LRs summed over optimizers)
    for spec in runs:
        args = {**recipe, **spec.arguments}  # what the run sees: the recipe under the command-line keys
        tokens = args["per_device_train_batch_size"] * 64 * args["max_steps"]
        assert tokens == 4 * 64 * 160  # same token budget at every batch size
        assert spec.tokens_per_step == args["per_device_train_batch_size"] * 64
        assert args["eval_steps"] == 40 // spec.batch_multiplier
        assert spec.output_dir == tmp_path / "out" / "runs" / spec.name
    lion = next(r for r in runs if r.optimizer == "lion")
    assert lion.arguments["weight_decay"] == 0.5 and lion.group == f"{tmp_path.name}-bx1"
    assert lion.argv()[:1] == [str(tmp_path / "recipe.yaml")]
    assert {"--optim", "lion", "--learning_rate", "0.0001"} <= set(lion.argv())
    assert len({r.name for r in runs}) == len(runs)


@pytest.mark.parametrize("study, message", [
    ({"optimizers": {"adamv": {"learning_rates": [1.0e-3]}}}, "adamw"),
    ({"optimizers": {"adamw": {"learning_rates": []}}}, "learning_rates"),
    ({"optimizers": {"adamw": {"learning_rates": [1.0e-3]}}, "seed": [0]}, "Did you mean 'seeds'"),
    ({"optimizers": {"adamw": {"learning_rates": [1.0e-3]}}, "overrides": {"learning_rate": 1}}, "learning_rate"),
    ({"optimizers": {"adamw": {"learning_rates": [1.0e-3]}}, "batch_size_multipliers": [1, 3]}, "divisible"),
])
def test_bad_study_files_fail_before_running(tmp_path, study, message):
    path = write_study(tmp_path, {"block_size": 64, "max_steps": 100}, study)
    with pytest.raises(ValueError, match=message):
        Study.from_yaml(path)


@pytest.mark.slow
def test_per_optimizer_recipes_and_the_pipeline_check(tmp_path):
    """``{optimizer}`` picks each optimizer's recipe; the pipeline's parser vets one run per optimizer, in a
    process of its own."""
    from hf_foco.compare.runner import check_runs

    common = {"block_size": 8, "max_steps": 10, "learning_rate": 1.0e-3}
    (tmp_path / "adamw.yaml").write_text(yaml.safe_dump({**common, "adam_beta2": 0.95}))
    (tmp_path / "signum.yaml").write_text(yaml.safe_dump({**common, "optim_kwargs": {"momentum": 0.9}}))
    optimizers = {"adamw": {"learning_rates": [1.0e-3]}, "signum": {"learning_rates": [1.0e-4]}}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({"recipe": "{optimizer}.yaml", "optimizers": optimizers,
                                    "output_dir": str(tmp_path / "out")}))
    study = Study.from_yaml(path)
    assert [spec.recipe.name for spec in study.runs()] == ["adamw.yaml", "signum.yaml"]
    check_runs(study)
    # One recipe for both: Signum takes no betas, and the study says so before any run starts.
    path.write_text(yaml.safe_dump({"recipe": "adamw.yaml", "optimizers": optimizers,
                                    "output_dir": str(tmp_path / "out")}))
    with pytest.raises(ValueError, match="signum.* would fail: .*betas"):
        check_runs(Study.from_yaml(path))


def test_a_crashing_run_is_recorded_and_the_study_goes_on(tmp_path):
    from hf_foco.compare.command import report_study
    from hf_foco.compare.runner import run_study

    path = write_study(tmp_path, {"block_size": 8, "max_steps": 10}, {
        "output_dir": str(tmp_path / "out"), "optimizers": {"adamw": {"learning_rates": [1.0e-3, 2.0e-3]}}})
    study = Study.from_yaml(path)
    crash = [sys.executable, "-c", "import sys; print('boom', sys.argv[1:]); sys.exit(3)"]
    assert len(run_study(study, crash)) == 2  # the first crash did not stop the study
    for spec in study.runs():
        marker = json.loads((spec.output_dir / "run.json").read_text())
        assert (marker["status"], marker["returncode"]) == ("failed", 3)
        assert "boom" in (spec.output_dir / "train.log").read_text()
    assert run_study(study, crash) == []  # failed runs are done unless retried
    assert len(run_study(study, crash, retry_failed=True)) == 2
    summary = report_study(study)
    group = summary["groups"][study.runs()[0].group]
    assert group["optimizers"]["adamw"]["diverged"] == 2 and group["target_eval_loss"] is None


# -- the runner: grid extension, jobs, threads and resume, on a fake trainer ------------------------------------

FAKE_TRAINER = """
import json, math, os, sys
options = dict(zip(sys.argv[2::2], sys.argv[3::2]))  # after the recipe: --key value pairs
optimum = {"adamw": 0.016, "lion": 0.002}[options["--optim"]]
lr, seed = float(options["--learning_rate"]), int(options["--seed"])
loss = 4.0 + 0.1 * math.log2(lr / optimum) ** 2 + 0.01 * seed
history = [{"step": 0, "eval_loss": 8.0}, {"step": 10, "loss": 6.0}, {"step": 20, "loss": loss, "eval_loss": loss}]
state = {"log_history": history, "threads": os.environ.get("OMP_NUM_THREADS")}
json.dump(state, open(os.path.join(options["--output_dir"], "trainer_state.json"), "w"))
"""


def test_runner_extends_grids_until_bracketed_or_the_limit_with_parallel_jobs(tmp_path):
    from hf_foco.compare.command import report_study
    from hf_foco.compare.runner import current_runs, run_study

    path = write_study(tmp_path, {"block_size": 8, "max_steps": 20}, {
        "name": "fake", "seeds": [0], "max_grid_extensions": 2, "output_dir": str(tmp_path / "out"),
        "optimizers": {"adamw": {"learning_rates": [1.0e-3, 2.0e-3, 4.0e-3]},
                       "lion": {"learning_rates": [1.0e-3, 2.0e-3, 4.0e-3]}}})
    study = Study.from_yaml(path)
    (tmp_path / "fake.py").write_text(FAKE_TRAINER)
    started = run_study(study, [sys.executable, str(tmp_path / "fake.py")], jobs=2, threads_per_run=1)
    lrs = {opt: sorted({s.learning_rate for s in started if s.optimizer == opt}) for opt in ("adamw", "lion")}
    # adamw's optimum (0.016) lies above its grid: 8e-3, then 1.6e-2, then the limit of 2 extensions.
    assert lrs == {"adamw": [1e-3, 2e-3, 4e-3, 8e-3, 1.6e-2], "lion": [1e-3, 2e-3, 4e-3]}
    assert len(started) == 5 + 3 and len({s.name for s in started}) == len(started)
    assert all(json.loads((s.output_dir / "trainer_state.json").read_text())["threads"] == "1" for s in started)
    assert run_study(study, [sys.executable, str(tmp_path / "fake.py")]) == []  # resumed: nothing left
    assert {s.name for s in current_runs(study)} == {s.name for s in started}

    summary = report_study(study)
    adamw, lion = (summary["groups"][started[0].group]["optimizers"][k] for k in ("adamw", "lion"))
    assert (adamw["best_learning_rate"], adamw["bracketed"]) == (1.6e-2, False)
    assert (lion["best_learning_rate"], lion["bracketed"]) == (2e-3, True)
    report = (study.output_dir / "report.md").read_text()
    assert "| adamw | 0.016 (edge) |" in report and "Unbracketed optimum" in report


def test_an_optimizer_run_at_one_given_lr_is_not_reported_as_unbracketed():
    from hf_foco.compare.report import _group_markdown

    runs = [run("a", "adamw", 1e-3, 0, evals=evals_reaching(3.0, 100)),  # one LR (e.g. learning_rates_from)
            run("f1", "foco", 1e-3, 0, evals=evals_reaching(3.2, 100)),  # a grid whose best is its top
            run("f2", "foco", 2e-3, 0, evals=evals_reaching(3.1, 100))]
    group = summarize(runs)["groups"]["g"]
    text = "\n".join(_group_markdown("g", group, [], []))
    assert "| adamw | 0.001 |" in text and "| foco | 0.002 (edge) |" in text
    assert "Unbracketed optimum (best LR at the edge of the grid, extensions used up or pending): foco." in text



def test_learning_rates_from_another_study_match_the_batch_size(tmp_path):
    source = tmp_path / "noise"
    source.mkdir()
    groups = {"nano-bx1": {"tokens_per_step": 32, "optimizers": {"adamw": {"best_learning_rate": 4e-3},
                                                                 "lion": {"best_learning_rate": None}}},
              "nano-bx8": {"tokens_per_step": 256, "optimizers": {"adamw": {"best_learning_rate": 1e-2}}}}
    (source / "summary.json").write_text(json.dumps({"groups": groups}))
    recipe = {"block_size": 8, "per_device_train_batch_size": 4, "max_steps": 10}
    path = write_study(tmp_path, recipe, {"seeds": [0, 1], "learning_rates_from": str(source),
                                          "optimizers": {"adamw": None, "signum": {"learning_rates": [1.0e-4]}}})
    runs = Study.from_yaml(path).runs()
    assert [(r.optimizer, r.learning_rate) for r in runs] == [("adamw", 4e-3)] * 2 + [("signum", 1e-4)] * 2
    path.write_text(yaml.safe_dump({"recipe": "recipe.yaml", "optimizers": {"lion": None},
                                    "learning_rates_from": str(source)}))
    with pytest.raises(ValueError, match="0 best LRs for 'lion' at 32 tokens per step"):
        Study.from_yaml(path)
    with pytest.raises(ValueError, match="no summary.json"):
        Study.from_yaml(path, learning_rates_from=tmp_path)
    path.write_text(yaml.safe_dump({"recipe": "recipe.yaml", "optimizers": {"lion": None}}))
    with pytest.raises(ValueError, match="learning_rates_from"):  # no LRs and nowhere to borrow them from
        Study.from_yaml(path)


# -- sharpness ------------------------------------------------------------------------------------------------

class Quadratic(torch.nn.Module):
    """loss = 0.5 w^T A w: the Hessian is A everywhere."""

    def __init__(self, a: torch.Tensor):
        super().__init__()
        self.register_buffer("a", a)
        self.w = torch.nn.Parameter(torch.randn(a.shape[0]))

    def forward(self, input_ids, labels=None):
        return type("Out", (), {"loss": 0.5 * self.w @ self.a @ self.w})()


def symmetric(eigenvalues: list[float]) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(len(eigenvalues), len(eigenvalues), dtype=torch.float64))
    return (q * torch.tensor(eigenvalues, dtype=torch.float64)) @ q.T


@pytest.mark.parametrize("top, dominant", [(7.0, 7.0), (4.0, -40.0)])
def test_lanczos_finds_the_top_eigenvalue_of_a_known_hessian(top, dominant):
    """Also when the largest-magnitude eigenvalue is negative (the second case, where the old shifted power
    iteration returned ~0 after 8 iterations): 80 weights, a bulk in [-1, 1], default 20 iterations."""
    torch.manual_seed(0)
    bulk = (torch.rand(77) * 2 - 1).tolist()
    model = Quadratic(symmetric([dominant, top, 0.8 * top] + bulk).float())
    value, residual = top_hessian_eigenpair(model, {"input_ids": torch.zeros(1)})
    exact = float(torch.linalg.eigvalsh(model.a.double()).max())
    assert value == pytest.approx(exact, rel=1e-4) and residual < 1e-3 * abs(exact)
    assert model.w.grad is None and model.training


def test_lanczos_residual_is_an_honest_error_bound():
    """Too few iterations: θ is off, and the reported ‖Av − θv‖ is large enough to say so (some eigenvalue of
    A lies within it of θ, here the top one, since θ is above every other)."""
    torch.manual_seed(1)
    a = symmetric([5.0, 4.9, 4.8] + (torch.rand(97) * 4).tolist())
    theta, residual = lanczos_top_eigenpair(lambda v: (a @ v.double()).float(), torch.randn(100), 3)
    assert abs(theta - 5.0) > 1e-3 and abs(theta - 5.0) <= residual
    theta, residual = lanczos_top_eigenpair(lambda v: (a @ v.double()).float(), torch.randn(100), 100)
    assert theta == pytest.approx(5.0, rel=1e-5) and residual < 1e-4  # an invariant subspace: exact


# -- a two-run study, end to end, with the real pretraining pipeline in subprocesses -------------------------------

@pytest.mark.slow
def test_two_run_study_end_to_end_with_resume(tmp_path, monkeypatch):
    from hf_foco.cli import main as cli
    from hf_foco.compare.runner import execute, run_study

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    words = "the cat dog sat on a mat ran to see big small red blue tree house".split()
    rng = torch.Generator().manual_seed(0)
    lines = [" ".join(words[i] for i in torch.randint(len(words), (12,), generator=rng)) for _ in range(300)]
    (tmp_path / "train.txt").write_text("\n".join(lines))
    recipe = {"model": "gpt2-nano", "config_overrides": "n_layer=1,n_embd=32,n_head=2,n_positions=32",
              "train_files": [str(tmp_path / "train.txt")], "tokenizer_vocab_size": 300, "block_size": 32,
              "data_cache_dir": str(tmp_path / "cache"), "max_eval_blocks": 4, "per_device_train_batch_size": 4,
              "per_device_eval_batch_size": 4, "max_steps": 4, "logging_steps": 1, "eval_strategy": "steps",
              "eval_steps": 2, "save_strategy": "no", "report_to": "none", "disable_tqdm": True,
              "dataloader_num_workers": 0}
    path = write_study(tmp_path, recipe, {
        "name": "mini", "seeds": [0], "output_dir": str(tmp_path / "study"),
        "overrides": {"hessian_every_n_steps": 2, "hessian_iterations": 3, "hessian_batch_size": 2},
        "optimizers": {"adamw": {"learning_rates": [1.0e-3]}, "foco": {"learning_rates": [1.0e-3]}}})
    study = Study.from_yaml(path)
    first, second = study.runs()
    # The study was interrupted after its first run finished, in the middle of the second one.
    assert execute(first)["status"] == "finished", (first.output_dir / "train.log").read_text()[-3000:]
    first_marker = (first.output_dir / "run.json").read_text()
    second.output_dir.mkdir(parents=True)
    (second.output_dir / "partial-checkpoint").write_text("left by the interrupted run")

    assert cli(["compare", str(path), "--report_only"]) == 0  # a partial study reports what it has
    assert json.loads((study.output_dir / "summary.json").read_text())["pending"] == [second.name]

    assert [r.name for r in run_study(study)] == [second.name]  # the finished run is skipped
    assert (first.output_dir / "run.json").read_text() == first_marker
    assert not (second.output_dir / "partial-checkpoint").exists()
    assert json.loads((second.output_dir / "run.json").read_text())["status"] == "finished"
    assert run_study(study) == []

    assert cli(["compare", str(path), "--report_only"]) == 0
    summary = json.loads((study.output_dir / "summary.json").read_text())
    state = json.loads((first.output_dir / "trainer_state.json").read_text())
    adamw_final = [e["eval_loss"] for e in state["log_history"] if "eval_loss" in e][-1]
    group = summary["groups"][first.group]
    assert group["target_eval_loss"] == pytest.approx(adamw_final) and group["reference_run"] == first.name
    assert {r["name"] for r in summary["runs"]} == {first.name, second.name} and summary["pending"] == []
    assert all(r["tokens_per_step"] == 4 * 32 and not r["diverged"] for r in summary["runs"])
    stamps = [e["wall_time_s"] for e in state["log_history"] if "loss" in e or "eval_loss" in e]
    assert len(stamps) >= 4 + 2 and stamps == sorted(stamps)  # every train and eval log is time-stamped
    eigen = [(e["top_hessian_eigenvalue"], e[RESIDUAL_KEY]) for e in state["log_history"] if RESIDUAL_KEY in e]
    assert len(eigen) == 2 and all(math.isfinite(v) and r >= 0 for v, r in eigen)  # steps 2 and 4
    # the summary carries the eigenvalues (one seed: the mean is the logged value), for the verdict's claim (d)
    logged = [[e["step"], e["top_hessian_eigenvalue"]] for e in state["log_history"] if RESIDUAL_KEY in e]
    assert group["optimizers"]["adamw"]["top_hessian_eigenvalue"] == logged
    assert next(r for r in summary["runs"] if r["name"] == first.name)["top_hessian_eigenvalue"] == logged
    report = (study.output_dir / "report.md").read_text()
    images = re.findall(r"\(plots/(.+?)\)", report)
    assert {f"{kind}-{first.group}.png" for kind in ("curves", "lr", "sharpness")} <= set(images)
    assert all((study.output_dir / "plots" / image).stat().st_size > 0 for image in images)
