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
from helpers import REPO, common_args, short_args, text_dataset, tiny_gpt2, token_batches
from safetensors.torch import load_file
from transformers import TrainerCallback
from transformers.trainer_utils import get_last_checkpoint

from hf_foco.optim import create_optimizer
from hf_foco.pretrain import main as pretrain_main
from hf_foco.trainer import FocoTrainer, FocoTrainingArguments
from hf_foco.trainer.checkpoints import (
    ResumePlan,
    checkpoint_problem,
    latest_complete_checkpoint,
    plan_resume,
    prepare_output_dir,
    rng_problem,
)

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
        assert steps == list(range(resumed_from + 1, MAX_STEPS + 1)), (out.name, steps)
        final = load_file(out / "model.safetensors")
        expected = load_file(reference / "model.safetensors")
        assert final.keys() == expected.keys()
        for key, value in expected.items():
            assert torch.equal(final[key], value), (out.name, key)
        # The rerun trained: its weights moved away from the checkpoint it resumed from.
        start = load_file(out / f"checkpoint-{resumed_from}" / "model.safetensors")
        assert any(not torch.equal(start[key], value) for key, value in expected.items())
    assert checkpoint_problem(partial) is None  # the rerun rewrote checkpoint-8 completely


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


def _plan(output_dir, resume=None, world_size=1, overwrite=False, record=None) -> ResumePlan:
    """plan_resume for a 100-step run with training arguments of these values and ``record`` (default: none)."""
    args = SimpleNamespace(resume_from_checkpoint=resume, overwrite_output_dir=overwrite, world_size=world_size,
                           reset_optimizer_state=False, max_steps=100, stability_monitor=True)
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
    finished = _files(out)
    steps = Steps()
    assert pretrain_main(argv, callbacks=[steps]) == 0  # the same command again
    assert steps.trained == [] and _files(out) == finished
    assert f"Nothing to do: the run in {out} already finished at step 2" in capsys.readouterr().out
    # Killed after writing checkpoint-2 (its last step) but before the final save: the rerun finishes from it.
    for name in ("model.safetensors", "eval_results.json", "all_results.json"):
        (out / name).unlink()
    steps = Steps()
    assert pretrain_main(argv, callbacks=[steps]) == 0
    assert steps.trained == []
    assert "checkpoint-2 is the run's last step (2): finishing it without training" in capsys.readouterr().out
    final, saved = load_file(out / "model.safetensors"), load_file(out / "checkpoint-2" / "model.safetensors")
    assert final.keys() == saved.keys() and all(torch.equal(final[k], saved[k]) for k in saved)


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


def test_an_optimizer_refuses_the_state_of_another_one():
    model = tiny_gpt2()
    foco = create_optimizer("foco", model)
    model(**token_batches(1)[0]).loss.backward()
    foco.step()
    with pytest.raises(ValueError, match=r"This state dict was saved by another optimizer .* not by Lion .*Resume "
                                         r"with the optimizer that saved it"):
        create_optimizer("lion", model).load_state_dict(foco.state_dict())
    again = create_optimizer("foco", model)
    again.load_state_dict(foco.state_dict())  # its own kind loads
    assert again.state_dict()["state"].keys() == foco.state_dict()["state"].keys()
