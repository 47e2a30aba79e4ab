"""Crash safety: a pretraining run SIGKILLed between checkpoints or while writing one is rerun with the same
command, resumes from the latest complete checkpoint (never a partial one) and ends bit-identical to a run
that was never interrupted; and which checkpoint directories count as complete."""

import hashlib
import json
import logging
import math
import re
import shutil
import signal
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from helpers import (
    REPO,
    common_args,
    kronecker_step,
    short_args,
    text_dataset,
    tiny_gpt2,
    token_batches,
    unwritable,
)
from safetensors.torch import load_file
from transformers import TrainerCallback
from transformers.trainer_utils import get_last_checkpoint

from hf_foco.optim import create_optimizer
from hf_foco.pretrain import main as pretrain_main
from hf_foco.trainer import FocoTrainer, FocoTrainingArguments, StabilityCallback
from hf_foco.trainer.checkpoints import (
    ResumePlan,
    checkpoint_problem,
    latest_complete_checkpoint,
    plan_resume,
    prepare_output_dir,
    rng_problem,
)
from hf_foco.trainer.trainer import CheckpointSaveError

# run_pretrain with a step trace on stdout and, with $CRASH_AT set, a SIGKILL of its own process:
# "step:N" right after step N (between checkpoints), "save:N" in the middle of writing checkpoint-N (model,
# optimizer and scheduler written; RNG state and trainer_state.json not yet).
WRAPPER = """\
import os, signal, sys
from transformers import TrainerCallback
from hf_foco.pretrain import main
from hf_foco.trainer import FocoTrainer

CRASH_AT = os.environ.get("CRASH_AT")

def die():
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)

class Trace(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        print("STEP", state.global_step, flush=True)
        if CRASH_AT == f"step:{state.global_step}":
            die()

save_rng_state = FocoTrainer._save_rng_state

def crashing_save_rng_state(self, output_dir):
    if CRASH_AT == f"save:{self.state.global_step}":
        die()
    save_rng_state(self, output_dir)

FocoTrainer._save_rng_state = crashing_save_rng_state
sys.exit(main(sys.argv[1:], callbacks=[Trace()]))
"""
MAX_STEPS, SAVE_STEPS = 12, 4


def _start(workspace, wrapper, out, crash_at=None):
    cmd = [sys.executable, str(wrapper), str(REPO / "recipes" / "gpt2-nano" / "foco.yaml"),
           *short_args(out, workspace["data_keys"]), "--max_steps", str(MAX_STEPS), "--save_strategy", "steps",
           "--save_steps", str(SAVE_STEPS), "--config_overrides", "n_layer=2,n_embd=64,n_head=2",
           "--disable_tqdm", "true"]
    env = {**workspace["env"], **({"CRASH_AT": crash_at} if crash_at else {})}
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(proc):
    log, _ = proc.communicate(timeout=300)
    return proc.returncode, log, [int(step) for step in re.findall(r"STEP (\d+)\n", log)]


@pytest.mark.slow
def test_sigkilled_runs_resume_from_the_latest_complete_checkpoint_and_end_identical(workspace, tmp_path):
    """Killed after step 10: the rerun resumes from checkpoint-8. Killed while writing checkpoint-8: the rerun
    skips it and resumes from checkpoint-4. Both end with the uninterrupted run's weights, bit for bit."""
    wrapper = tmp_path / "crashing_run.py"
    wrapper.write_text(WRAPPER)
    reference, between, during = tmp_path / "uninterrupted", tmp_path / "between", tmp_path / "during"
    # The three first runs concurrently (they are mostly interpreter start-up), then the two reruns.
    first = {out: _start(workspace, wrapper, out, crash) for out, crash in
             [(reference, None), (between, "step:10"), (during, "save:8")]}
    done = {out: _finish(proc) for out, proc in first.items()}
    rc, log, steps = done[reference]
    assert rc == 0 and steps == list(range(1, MAX_STEPS + 1)), log[-3000:]
    for out, last_step in [(between, 10), (during, 8)]:
        rc, log, steps = done[out]
        assert rc == -signal.SIGKILL and steps == list(range(1, last_step + 1)), log[-3000:]
    # Killed in the middle of writing checkpoint-8: the directory is there, with weights and optimizer state
    # but no trainer_state.json, and transformers' name-based search would resume from it.
    partial = during / "checkpoint-8"
    assert (partial / "model.safetensors").is_file() and (partial / "optimizer.pt").is_file()
    assert not (partial / "trainer_state.json").exists()
    assert get_last_checkpoint(str(during)) == str(partial)

    reruns = {out: _start(workspace, wrapper, out) for out in (between, during)}  # the same command, no flag
    for out, resumed_from in [(between, 8), (during, 4)]:
        rc, log, steps = _finish(reruns[out])
        assert rc == 0, log[-3000:]
        assert f"Resuming from {out / f'checkpoint-{resumed_from}'}," in log, log[-3000:]
        assert (f"Skipping partial checkpoint {partial}: no trainer_state.json" in log) == (out == during)
        # The partial checkpoint-8 it would write again was moved aside, whole, before the rerun trained.
        assert (out / "checkpoint-8.incomplete" / "optimizer.pt").is_file() == (out == during)
        assert steps == list(range(resumed_from + 1, MAX_STEPS + 1)), (out.name, steps)
        final = load_file(out / "model.safetensors")
        expected = load_file(reference / "model.safetensors")
        assert final.keys() == expected.keys()
        for key, value in expected.items():
            assert torch.equal(final[key], value), (out.name, key)
        # The rerun trained: its weights moved away from the checkpoint it resumed from.
        start = load_file(out / f"checkpoint-{resumed_from}" / "model.safetensors")
        assert any(not torch.equal(start[key], value) for key, value in expected.items())
    assert checkpoint_problem(partial) is None  # the rerun wrote checkpoint-8 anew, completely


@pytest.fixture(scope="module")
def real_checkpoint(tmp_path_factory):
    """A checkpoint-2 written by FocoTrainer itself (tiny GPT-2, foco), to cut into partial ones."""
    out = tmp_path_factory.mktemp("trainer")
    args = FocoTrainingArguments(**common_args(out, optim="foco", max_steps=2, save_strategy="steps",
                                               save_steps=2))
    FocoTrainer(model=tiny_gpt2(), args=args, train_dataset=text_dataset(16)).train()
    return out / "checkpoint-2"


def _copy(checkpoint, output_dir, step):
    """``checkpoint`` as ``output_dir/checkpoint-<step>``, its trainer_state.json saying that step."""
    target = output_dir / f"checkpoint-{step}"
    shutil.copytree(checkpoint, target)
    state = json.loads((target / "trainer_state.json").read_text())
    (target / "trainer_state.json").write_text(json.dumps({**state, "global_step": step}))
    return target


def _nan_weights(path):
    """Overwrite the last 64 bytes of the tensor data with NaN (0xFF...): the right size, headers intact."""
    data = bytearray(path.read_bytes())
    data[-64:] = b"\xff" * 64
    path.write_bytes(bytes(data))


def _damage_interior(path):
    """Flip bytes in the middle of a torch zip: its directory (at the end) still reads."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 16] = bytes(b ^ 0xFF for b in data[middle:middle + 16])
    path.write_bytes(bytes(data))


# What a SIGKILL (or a damaged disk) can leave, each with the reason given.
PARTIAL = {
    "killed before trainer_state.json": (lambda c: (c / "trainer_state.json").unlink(), "no trainer_state.json"),
    "killed while writing trainer_state.json": (
        lambda c: (c / "trainer_state.json").write_text((c / "trainer_state.json").read_text()[:40]),
        "trainer_state.json is truncated"),
    "no optimizer.pt": (lambda c: (c / "optimizer.pt").unlink(), "no optimizer state"),
    "no scheduler.pt": (lambda c: (c / "scheduler.pt").unlink(), "no scheduler state"),
    "NaN bytes in the weights": (lambda c: _nan_weights(c / "model.safetensors"),
                                 "model.safetensors holds non-finite weights"),
    "damaged interior of optimizer.pt": (lambda c: _damage_interior(c / "optimizer.pt"),
                                         "optimizer.pt is corrupt .*CRC"),
    "no model weights": (lambda c: (c / "model.safetensors").unlink(), "no model weights"),
    "state of another step": (
        lambda c: (c / "trainer_state.json").write_text(json.dumps({"global_step": 3})),
        "trainer_state.json records step 3"),
}


@pytest.mark.parametrize("damage", PARTIAL)
def test_a_partial_checkpoint_is_skipped_with_a_warning_naming_it(real_checkpoint, tmp_path, caplog, damage):
    mutate, reason = PARTIAL[damage]
    complete = [_copy(real_checkpoint, tmp_path, step) for step in (4, 8)]
    partial = _copy(real_checkpoint, tmp_path, 12)
    mutate(partial)
    (tmp_path / "checkpoint-20").write_text("a file, not a checkpoint directory")
    (tmp_path / "checkpoint-final").mkdir()
    with caplog.at_level(logging.WARNING):
        assert latest_complete_checkpoint(tmp_path) == str(complete[-1])
    assert re.search(f"Skipping partial checkpoint {partial}: {reason}", caplog.text), caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == [  # nothing deleted
        "checkpoint-12", "checkpoint-20", "checkpoint-4", "checkpoint-8", "checkpoint-final"]


def _plan(output_dir, resume=None, world_size=1, overwrite=False, record=None, max_steps=100) -> ResumePlan:
    """plan_resume for a run with training arguments of these values and ``record`` (default: none)."""
    args = SimpleNamespace(resume_from_checkpoint=resume, overwrite_output_dir=overwrite, world_size=world_size,
                           reset_optimizer_state=False, max_steps=max_steps, stability_monitor=True)
    return plan_resume(output_dir, args, record or {})


def test_another_world_size_resumes_with_a_warning_about_rng_streams(real_checkpoint, tmp_path, caplog):
    """A checkpoint of a 1-process run is complete for a 2-process rerun: it is resumed, not judged partial and
    overwritten; the warning says the random streams differ."""
    checkpoint = _copy(real_checkpoint, tmp_path, 2)
    assert checkpoint_problem(checkpoint) is None
    assert "rng_state_0.pth, rng_state_1.pth" in rng_problem(checkpoint, world_size=2)
    with caplog.at_level(logging.WARNING):
        assert _plan(tmp_path, world_size=2).checkpoint == str(checkpoint)
    assert "random streams" in caplog.text
    shutil.copy(checkpoint / "rng_state.pth", checkpoint / "rng_state_0.pth")
    shutil.copy(checkpoint / "rng_state.pth", checkpoint / "rng_state_1.pth")
    assert rng_problem(checkpoint, world_size=2) is None


def test_a_finished_checkpoint_that_cannot_resume_is_never_overwritten(real_checkpoint, tmp_path):
    """--save_only_model checkpoints (no optimizer state), or final weights: a restart from scratch is refused
    with the fix; --overwrite_output_dir removes the old checkpoints, saying so."""
    checkpoint = _copy(real_checkpoint, tmp_path, 4)
    (checkpoint / "optimizer.pt").unlink()
    with pytest.raises(ValueError, match=r"holds checkpoint-4 \(no optimizer state .*\) of an earlier run but no "
                                         r"checkpoint to resume from, .*Pass a new --output_dir, or "
                                         r"--overwrite_output_dir true"):
        _plan(tmp_path)
    (checkpoint / "nonfinite_next_step.json").write_text('{"nonfinite_step": 5}')  # the NaN guard's mark
    with pytest.raises(ValueError, match=r"holds checkpoint-4 \(nonfinite_next_step\.json: the step after it had "
                                         r"non-finite gradients"):
        _plan(tmp_path)
    assert _plan(tmp_path, overwrite=True) == ResumePlan(clear=True)
    assert prepare_output_dir(ResumePlan(clear=True), tmp_path) == ["checkpoint-4"] and not checkpoint.exists()
    shutil.copy(real_checkpoint / "model.safetensors", tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match=r"holds model\.safetensors"):
        _plan(tmp_path)


def test_only_partial_checkpoints_or_none_start_from_scratch(real_checkpoint, tmp_path):
    assert latest_complete_checkpoint(tmp_path / "missing") is None
    assert _plan(tmp_path).checkpoint is None
    (_copy(real_checkpoint, tmp_path, 4) / "trainer_state.json").unlink()
    assert latest_complete_checkpoint(tmp_path) is None
    assert _plan(tmp_path).checkpoint is None


def test_resume_flag_checks_a_path_and_resolves_latest(real_checkpoint, tmp_path):
    with pytest.raises(ValueError, match="--resume_from_checkpoint /some/where/checkpoint-7 cannot be resumed from: "
                                         "no such directory"):
        _plan(tmp_path, "/some/where/checkpoint-7")
    for word in ("latest", "true", "True"):
        with pytest.raises(ValueError, match=f"--resume_from_checkpoint {word}: .* holds no complete checkpoint"):
            _plan(tmp_path, word)
    checkpoint = _copy(real_checkpoint, tmp_path, 6)
    assert _plan(tmp_path, "latest").checkpoint == _plan(tmp_path).checkpoint == str(checkpoint)
    # An explicit path wins over the latest checkpoint.
    assert _plan(tmp_path, str(real_checkpoint)).checkpoint == str(real_checkpoint)


def test_a_checkpoint_the_run_does_not_use_is_moved_aside_not_overwritten(real_checkpoint, tmp_path, caplog):
    """checkpoint-4 with intact weights but no (or a corrupt) optimizer.pt: the rerun resumes from checkpoint-2,
    and checkpoint-4, which it would write again at step 4, is moved aside to a name that says why, whole. So
    is every later checkpoint when an earlier one is named explicitly."""
    good = _copy(real_checkpoint, tmp_path, 2)
    partial = _copy(real_checkpoint, tmp_path, 4)
    (partial / "optimizer.pt").unlink()
    corrupt = _copy(real_checkpoint, tmp_path, 6)
    _damage_interior(corrupt / "optimizer.pt")
    files = {p.name: _files(p) for p in (partial, corrupt)}
    plan = _plan(tmp_path)
    assert plan.checkpoint == str(good)
    assert plan.set_aside == ((str(corrupt), "corrupt"), (str(partial), "incomplete"))
    with caplog.at_level(logging.WARNING):
        assert prepare_output_dir(plan, tmp_path) == ["checkpoint-6.corrupt", "checkpoint-4.incomplete"]
    assert "Moved checkpoint-4 aside to checkpoint-4.incomplete" in caplog.text
    assert _files(tmp_path / "checkpoint-4.incomplete") == files["checkpoint-4"]
    assert _files(tmp_path / "checkpoint-6.corrupt") == files["checkpoint-6"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-2", "checkpoint-4.incomplete",
                                                          "checkpoint-6.corrupt"]
    later = _copy(real_checkpoint, tmp_path, 4)  # complete, but the run is told to resume from checkpoint-2
    plan = _plan(tmp_path, str(good))
    assert plan.set_aside == ((str(later), "unused"),)
    assert prepare_output_dir(plan, tmp_path) == ["checkpoint-4.unused"]


def test_a_checkpoint_a_save_would_touch_is_checked_for_writing_up_front(real_checkpoint, tmp_path):
    """A checkpoint directory made immutable: the run would fail writing its step again (or rotating it out)
    only after training up to it. The plan refuses it before any step, naming it."""
    _copy(real_checkpoint, tmp_path, 2)
    partial = _copy(real_checkpoint, tmp_path, 4)
    (partial / "trainer_state.json").unlink()
    with unwritable(partial), pytest.raises(ValueError, match=r"--output_dir .* cannot hold the run's checkpoints: "
                                                              r".*checkpoint-4 is not writable\. Pass a --output_dir"):
        _plan(tmp_path)
    with unwritable(partial / "model.safetensors"), pytest.raises(ValueError, match=r"model\.safetensors is not "
                                                                                    r"writable"):
        _plan(tmp_path)
    assert _plan(tmp_path).set_aside == ((str(partial), "incomplete"),)


def test_a_finished_run_is_done_only_with_every_file_there(real_checkpoint, tmp_path):
    """Killed after its last checkpoint, its final save and its evaluation, but before its own files: the run is
    not done; the plan names what is missing, for the job to write without training."""
    checkpoint = _copy(real_checkpoint, tmp_path, 2)
    for name in ("model.safetensors", "config.json"):
        shutil.copy(checkpoint / name, tmp_path / name)
    (tmp_path / "eval_results.json").write_text('{"eval_loss": 4.0}')
    (tmp_path / "all_results.json").write_text('{"eval_loss": 4.0}')
    plan = _plan(tmp_path, max_steps=2)
    assert (plan.checkpoint, plan.finished_step, plan.done) == (str(checkpoint), 2, False)
    assert set(plan.missing) == {"trainer_state.json", "training_args.json", "run_info.json", "resume_record.json",
                                 "stability.json", "loss_curve.png", "README.md"}
    for name in plan.missing:
        (tmp_path / name).write_text("{}")
    assert _plan(tmp_path, max_steps=2).done
    assert not _plan(tmp_path, max_steps=4).done  # a larger --max_steps trains further


def test_a_finished_run_without_checkpoints_is_done_and_compared(real_checkpoint, tmp_path):
    """--save_strategy no: the final files alone say the run finished; its recorded settings are compared."""
    for name in ("model.safetensors", "config.json", "trainer_state.json"):
        shutil.copy(real_checkpoint / name, tmp_path / name)
    for name in ("eval_results.json", "all_results.json", "training_args.json", "run_info.json", "stability.json",
                 "loss_curve.png", "README.md"):
        (tmp_path / name).write_text("{}")
    (tmp_path / "resume_record.json").write_text(json.dumps({"optimizer": {"name": "foco", "lr": 0.001}}))
    assert _plan(tmp_path, max_steps=2) == ResumePlan(finished_step=2)
    with pytest.raises(ValueError, match=r"The finished run in .* was saved by another optimizer than this run's "
                                         r"\(lr: 0\.001 -> 0\.002\)"):
        _plan(tmp_path, max_steps=2, record={"optimizer": {"name": "foco", "lr": 0.002}})
    with pytest.raises(ValueError, match=r"holds model\.safetensors of an earlier run but no checkpoint"):
        _plan(tmp_path, max_steps=4)


def test_resume_false_starts_from_scratch_only_where_nothing_is_overwritten(real_checkpoint, tmp_path):
    assert _plan(tmp_path, "false") == ResumePlan()
    _copy(real_checkpoint, tmp_path, 2)
    with pytest.raises(ValueError, match=r"--resume_from_checkpoint False: .* holds checkpoint-2, which starting "
                                         r"from scratch would overwrite"):
        _plan(tmp_path, False)  # a recipe's unquoted `false`


def test_a_failed_save_stops_naming_the_last_good_checkpoint(tmp_path):
    """The output directory becomes unwritable after checkpoint-1: the save of checkpoint-2 stops the run with
    one message that names checkpoint-1, instead of an OSError from inside the Trainer."""

    class LockAfterFirstSave(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.global_step == 1:
                lock.__enter__()

    out = tmp_path / "run"
    lock = unwritable(out)
    args = FocoTrainingArguments(**common_args(out, optim="foco", max_steps=2, save_strategy="steps", save_steps=1))
    trainer = FocoTrainer(model=tiny_gpt2(), args=args, train_dataset=text_dataset(16), callbacks=[LockAfterFirstSave()])
    try:
        with pytest.raises(CheckpointSaveError, match=r"could not write checkpoint-2 in .*run \((PermissionError|"
                                                      r"OSError): .*\)\. The last good checkpoint is .*run/checkpoint-1: "
                                                      r"make .* writable \(or free space\), then rerun the same "
                                                      r"command"):
            trainer.train()
    finally:
        lock.__exit__(None, None, None)
    assert checkpoint_problem(out / "checkpoint-1") is None


def test_a_run_that_ends_well_sets_an_earlier_nonfinite_record_aside(tmp_path):
    """nonfinite.json of an earlier, diverged attempt is renamed when a later run in the same directory ends
    well, so no file in it says this run stopped; a diverged run keeps (rewrites) it."""
    (tmp_path / "nonfinite.json").write_text('{"first_bad_step": 3}')
    state = SimpleNamespace(is_world_process_zero=True, log_history=[{"step": 1, "loss": 2.0}], global_step=1)
    monitor = StabilityCallback()
    assert monitor.write_summary(SimpleNamespace(output_dir=str(tmp_path)), state)["status"] == "ok"
    assert not (tmp_path / "nonfinite.json").exists()
    assert json.loads((tmp_path / "nonfinite.earlier.json").read_text()) == {"first_bad_step": 3}
    monitor.skipped_steps, monitor.consecutive_bad = [2], 1
    monitor.diverge(SimpleNamespace(output_dir=str(tmp_path)), state)
    assert json.loads((tmp_path / "nonfinite.json").read_text())["first_bad_step"] == 2


# -- end to end through the pretraining job ------------------------------------------------------------------

class Steps(TrainerCallback):
    """The optimizer steps a run trained, and every loss it logged."""

    def __init__(self):
        self.trained, self.losses = [], {}

    def on_step_end(self, args, state, control, **kwargs):
        self.trained.append(state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.losses[state.global_step] = logs["loss"]


def _files(root):
    """Every file under ``root`` with its bytes' hash and modification time."""
    return {str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in root.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_a_finished_run_rerun_is_a_no_op_and_a_run_killed_after_its_last_checkpoint_trains_no_more(
        workspace, tmp_path, capsys):
    out = tmp_path / "run"
    argv = [str(REPO / "recipes" / "gpt2-nano" / "foco.yaml"), *short_args(out, workspace["data_keys"]),
            "--save_strategy", "steps", "--save_steps", "2", "--lr_scheduler_type", "constant"]
    assert pretrain_main(argv) == 0
    finished, loss = _files(out), json.loads((out / "eval_results.json").read_text())["eval_loss"]
    steps = Steps()
    assert pretrain_main(argv, callbacks=[steps]) == 0  # the same command again
    assert steps.trained == [] and _files(out) == finished
    assert f"Nothing to do: the run in {out} already finished at step 2" in capsys.readouterr().out
    # Killed after the final save and evaluation, before the run's own files: the rerun writes them, without
    # training, and says so; then it is done.
    own = ("trainer_state.json", "run_info.json", "loss_curve.png", "README.md", "training_args.json")
    for name in own:
        (out / name).unlink()
    steps = Steps()
    assert pretrain_main(argv, callbacks=[steps]) == 0
    assert steps.trained == [] and all((out / name).is_file() for name in own)
    assert (f"Completing the run in {out}: {out / 'checkpoint-2'} is its last step (2), but trainer_state.json, "
            "training_args.json, run_info.json, loss_curve.png, README.md are missing; writing them without "
            "training.") in capsys.readouterr().out
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 2
    assert json.loads((out / "eval_results.json").read_text())["eval_loss"] == loss  # the same weights, evaluated
    # Killed after writing checkpoint-2 (its last step) but before the final save: the rerun finishes from it.
    for name in ("model.safetensors", "eval_results.json", "all_results.json"):
        (out / name).unlink()
    steps = Steps()
    assert pretrain_main(argv, callbacks=[steps]) == 0
    assert steps.trained == []
    assert "model.safetensors, eval_results.json, all_results.json are missing; writing them without training" in \
        capsys.readouterr().out
    final, saved = load_file(out / "model.safetensors"), load_file(out / "checkpoint-2" / "model.safetensors")
    assert final.keys() == saved.keys() and all(torch.equal(final[k], saved[k]) for k in saved)
    assert pretrain_main(argv) == 0 and "Nothing to do" in capsys.readouterr().out


@pytest.mark.slow
def test_a_run_that_ends_diverged_exits_1_saves_nothing_of_it_and_logs_no_zero_loss(workspace, tmp_path):
    """--learning_rate 1e30: step 1 blows the weights up, steps 2-4 are skipped, fewer than --max_bad_steps
    (5), so training "finishes": the job must still fail, keep no checkpoint of the blown-up weights and
    log the skipped steps' losses as NaN, not 0."""
    out, steps = tmp_path / "run", Steps()
    argv = [str(REPO / "recipes" / "gpt2-nano" / "foco.yaml"), *short_args(out, workspace["data_keys"]),
            "--max_steps", "4", "--learning_rate", "1e30", "--warmup_steps", "0", "--save_strategy", "steps",
            "--save_steps", "1"]
    with pytest.raises(SystemExit, match=r"run_pretrain: error: the run diverged: the eval loss is nan\. The last "
                                         r"good checkpoint is none\. Lower --learning_rate"):
        pretrain_main(argv, callbacks=[steps])
    assert not list(out.glob("checkpoint-*")) and not (out / "model.safetensors").exists()
    assert not (out / "eval_results.json").exists()
    assert json.loads((out / "stability.json").read_text())["status"] == "diverged"
    record = json.loads((out / "nonfinite.json").read_text())
    assert record["first_bad_step"] == 2 and record["skipped_steps"] == [2, 3, 4]
    assert record["last_good_checkpoint"] is None
    assert math.isfinite(steps.losses[1]) and all(math.isnan(steps.losses[s]) for s in (2, 3, 4)), steps.losses


@pytest.mark.slow
def test_a_divergence_stop_under_accelerate_launch_is_one_line_and_a_later_good_run_sets_its_record_aside(
        workspace, tmp_path):
    """The NaN guard's stop (steps 2-4 non-finite, --max_bad_steps 3) under ``accelerate launch -q`` (-q: the
    launcher adds no traceback of its own): exit 1 and one line from the job. A later run in the same directory
    that ends well renames the stale nonfinite.json, beside a stability.json that says ok."""
    out = tmp_path / "run"
    argv = [str(REPO / "recipes" / "gpt2-nano" / "foco.yaml"), *short_args(out, workspace["data_keys"])]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "-q", "--config_file",
              str(REPO / "recipes" / "accelerate_configs" / "cpu.yaml"), "-m", "hf_foco.cli", "train"]
    diverging = ["--max_steps", "6", "--learning_rate", "1e30", "--warmup_steps", "0", "--max_bad_steps", "3",
                 "--disable_tqdm", "true"]
    proc = subprocess.run([*launch, *argv, *diverging], env=workspace["env"], capture_output=True, text=True,
                          timeout=600)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1 and "Traceback" not in output, output[-3000:]
    (error,) = [line for line in output.splitlines() if line.startswith("run_pretrain: error:")]
    assert re.search(r"Stopped at step 4: 3 consecutive steps had non-finite gradients \(skipped steps: \[2, 3, "
                     r"4\]\)\. No checkpoint before them is good\. Lower --learning_rate", error), error
    assert json.loads((out / "nonfinite.json").read_text())["first_bad_step"] == 2
    assert pretrain_main(argv) == 0  # the recipe's learning rate: no divergence
    assert not (out / "nonfinite.json").exists()
    assert json.loads((out / "nonfinite.earlier.json").read_text())["first_bad_step"] == 2
    assert json.loads((out / "stability.json").read_text())["status"] == "ok"


# -- the stability record and the optimizer's state across a resume ------------------------------------------

def _poisoned(out, bad_steps, **overrides):
    args = FocoTrainingArguments(**common_args(out, optim="foco", learning_rate=3e-3, max_steps=6, logging_steps=1,
                                               save_strategy="steps", save_steps=3, max_bad_steps=3, **overrides))
    trainer = FocoTrainer(model=tiny_gpt2(), args=args, train_dataset=text_dataset(48))
    weight = trainer.model.transformer.h[0].attn.c_attn.weight
    weight.register_hook(lambda g: g * float("nan") if trainer.state.global_step + 1 in bad_steps else g)
    return trainer


def test_the_stability_record_survives_a_resume(tmp_path):
    """A run with step 2 skipped, resumed from checkpoint-3, reports what the uninterrupted run reports:
    the skipped step, the largest gradient norm and the spikes of the steps before the resume too."""
    whole = _poisoned(tmp_path / "whole", {2})
    whole.train()
    shutil.copytree(tmp_path / "whole" / "checkpoint-3", tmp_path / "resumed" / "checkpoint-3")
    resumed = _poisoned(tmp_path / "resumed", set())
    resumed.train(resume_from_checkpoint=str(tmp_path / "resumed" / "checkpoint-3"))
    expected = json.loads((tmp_path / "whole" / "stability.json").read_text())
    assert expected["skipped_steps"] == [2] and expected["max_grad_norm"] is not None
    assert json.loads((tmp_path / "resumed" / "stability.json").read_text()) == expected


def test_every_registry_optimizer_refuses_the_state_of_another_one():
    """Each registry optimizer's state (after a step) loads into its own kind and is refused by every other kind,
    torch's AdamW (the registry's ``adamw``) included; K-FAC's state is FOP's with β* = 0, so only FOP's state
    is refused the other way."""
    model, batch = tiny_gpt2(), token_batches(2)
    saved = {}
    for name in ("foco", "focus", "signum", "lion", "adamw", "kfac", "fop"):
        optimizer = create_optimizer(name, model)
        for inputs in batch:
            if name in ("kfac", "fop"):
                kronecker_step(optimizer, model, inputs)
            else:
                model.zero_grad()
                model(**inputs).loss.backward()
                optimizer.step()
        saved[name] = optimizer.state_dict()
    for source, state in saved.items():
        for target in saved:
            fresh = create_optimizer(target, model)
            if source == target or (source, target) == ("kfac", "fop"):
                fresh.load_state_dict(state)
                assert fresh.state_dict()["state"].keys() == state["state"].keys()
                continue
            with pytest.raises(ValueError, match=r"This state dict was saved by another optimizer .* not by "
                                                 r"\w+ .*Resume with the optimizer that saved it"):
                fresh.load_state_dict(state)
