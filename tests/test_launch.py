"""Launch configs and the global batch: the GPU configs take their process count from the command line, a recipe's
``tokens_per_step`` becomes the gradient accumulation of the launch (or a clear refusal), and multi-node DDP
(recipes/accelerate_configs/multi_node.yaml) runs as two "machines" on localhost with gloo, resuming after one
of them is killed."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
import yaml
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from helpers import REPO, SEQ, common_args, short_args, text_dataset, tiny_gpt2

from hf_foco.trainer import FocoTrainer, FocoTrainingArguments
from hf_foco.trainer.batch import derive_accumulation

CONFIGS = REPO / "recipes" / "accelerate_configs"


def launch_settings(config: str, *flags: str):
    """What ``accelerate launch --config_file CONFIG FLAGS script.py`` would start (accelerate's own validation)."""
    args = launch_command_parser().parse_args(["--config_file", str(CONFIGS / config), *flags, "script.py"])
    return _validate_launch_command(args)[0]


@pytest.mark.parametrize("config", ["multi_gpu.yaml", "fsdp.yaml"])
def test_gpu_configs_take_the_process_count_from_the_command_line(config):
    assert "num_processes" not in yaml.safe_load((CONFIGS / config).read_text())
    with pytest.raises(ValueError, match="manually pass in `--num_processes`"):
        launch_settings(config)
    for count in (2, 8):
        settings = launch_settings(config, "--num_processes", str(count))
        assert (settings.num_processes, settings.num_machines) == (count, 1)


def test_multi_node_config_takes_the_machine_from_the_command_line():
    settings = launch_settings("multi_node.yaml", "--num_machines", "4", "--num_processes", "32", "--machine_rank", "3",
                               "--main_process_ip", "10.0.0.1", "--main_process_port", "29500")
    assert (settings.num_processes, settings.num_machines, settings.machine_rank) == (32, 4, 3)
    assert (settings.main_process_ip, settings.main_process_port, settings.multi_gpu) == ("10.0.0.1", 29500, True)


def batch_args(world: int, per_device: int, tokens: int | None, accumulation: int = 1) -> SimpleNamespace:
    return SimpleNamespace(world_size=world, per_device_train_batch_size=per_device, tokens_per_step=tokens,
                           gradient_accumulation_steps=accumulation)


@pytest.mark.parametrize("world, accumulation", [(1, 32), (2, 16), (8, 4)])
def test_tokens_per_step_sets_the_accumulation_for_the_world_size(world, accumulation):
    args = batch_args(world, 16, 2 ** 19)
    derive_accumulation(args, block_size=1024)
    assert args.gradient_accumulation_steps == accumulation
    assert world * 16 * 1024 * args.gradient_accumulation_steps == 2 ** 19


def test_a_batch_that_does_not_divide_is_refused_naming_the_numbers():
    with pytest.raises(ValueError, match=r"--tokens_per_step 524288 is not a multiple of 3 process\(es\) x 16 "
                                         r"sequences x 1024 tokens = 49152 .* no per-device batch divides it"):
        derive_accumulation(batch_args(3, 16, 2 ** 19), block_size=1024)
    with pytest.raises(ValueError, match=r"1 process\(es\) x 24 sequences .* --per_device_train_batch_size 16 "
                                         "divides it"):
        derive_accumulation(batch_args(1, 24, 2 ** 19), block_size=1024)
    with pytest.raises(ValueError, match="--gradient_accumulation_steps 8 contradicts --tokens_per_step 524288, "
                                         "which needs 16 on 2 process"):
        derive_accumulation(batch_args(2, 16, 2 ** 19, accumulation=8), block_size=1024)
    args = batch_args(2, 16, None, accumulation=8)
    derive_accumulation(args, block_size=1024)  # unset: the accumulation stays as given
    assert args.gradient_accumulation_steps == 8


def test_any_script_with_tokens_per_step_trains_exactly_that_batch(tmp_path):
    """Outside the pretraining job nothing derives the accumulation: the first micro-batch is checked."""
    settings = common_args(tmp_path, optim="foco", max_steps=1, per_device_train_batch_size=4,
                           tokens_per_step=2 * 4 * SEQ)
    trainer = FocoTrainer(model=tiny_gpt2(), args=FocoTrainingArguments(**settings), train_dataset=text_dataset(16))
    with pytest.raises(ValueError, match=rf"--tokens_per_step {2 * 4 * SEQ}, but each optimizer step trains 1 "
                                         rf"process\(es\) x 4 sequences x {SEQ} tokens x 1 accumulation steps"):
        trainer.train()
    args = FocoTrainingArguments(**settings, gradient_accumulation_steps=2)
    FocoTrainer(model=tiny_gpt2(), args=args, train_dataset=text_dataset(16)).train()


# -- two machines on localhost --------------------------------------------------------------------------------

KILL_AT, SAVE_EVERY, STEPS = 3, 2, 5
WRAPPER = """
import json, os, signal, sys, torch
from transformers import TrainerCallback
from hf_foco.pretrain import main

kill_at, logs, *argv = sys.argv[1:]

class Machine(TrainerCallback):
    def on_log(self, args, state, control, logs=None, **kwargs):
        if args.process_index == 0 and "loss" in (logs or {}):
            with open(LOGS, "a") as f:
                f.write(json.dumps({"step": state.global_step, "loss": logs["loss"]}) + "\\n")
        if args.process_index == 1 and state.global_step == int(kill_at):
            os.kill(os.getppid(), signal.SIGKILL)  # machine 1's launcher (torchrun runs inside it), then itself
            os.kill(os.getpid(), signal.SIGKILL)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        torch.save({"world_size": args.world_size, "state": model.state_dict(), "step": state.global_step},
                   f"{args.output_dir}/rank{args.process_index}.pt")

LOGS = logs
sys.exit(main(argv, callbacks=[Machine()]))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _machines(workspace, wrapper, out, kill_at: int) -> list[subprocess.Popen]:
    """Both machines' ``accelerate launch`` of the nano foco recipe, each in its own process group."""
    port = str(_free_port())
    common = [str(REPO / "recipes" / "gpt2-nano" / "foco.yaml"), *short_args(out, workspace["data_keys"]),
              "--max_steps", str(STEPS), "--save_strategy", "steps", "--save_steps", str(SAVE_EVERY),
              "--logging_steps", "1", "--eval_strategy", "no", "--warmup_steps", "0"]
    return [subprocess.Popen(
        [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / "multi_node.yaml"),
         "--num_machines", "2", "--num_processes", "2", "--machine_rank", str(rank), "--main_process_ip",
         "127.0.0.1", "--main_process_port", port, str(wrapper), str(kill_at), str(out / "losses.jsonl"), *common],
        env=workspace["env"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        for rank in (0, 1)]


def _wait(procs: list[subprocess.Popen], timeout: float) -> list[tuple[int, str]]:
    try:
        return [(p.communicate(timeout=timeout)[0], p.returncode)[::-1] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)


@pytest.mark.slow
def test_two_machines_train_and_resume_after_one_is_killed(workspace, tmp_path):
    wrapper = tmp_path / "machine.py"
    wrapper.write_text(WRAPPER)
    out = tmp_path / "run"
    killed = _wait(_machines(workspace, wrapper, out, kill_at=KILL_AT), timeout=240)
    assert killed[1][0] == -signal.SIGKILL, killed[1][1][-3000:]  # machine 1 died at step KILL_AT ...
    assert killed[0][0] != 0, killed[0][1][-3000:]  # ... and machine 0 stopped with it, not hanging
    first = [json.loads(line) for line in (out / "losses.jsonl").read_text().splitlines()]
    assert [e["step"] for e in first] == list(range(1, KILL_AT + 1))
    assert sorted(p.name for p in out.glob("checkpoint-*")) == [f"checkpoint-{SAVE_EVERY}"]

    resumed = _wait(_machines(workspace, wrapper, out, kill_at=0), timeout=240)
    assert [code for code, _ in resumed] == [0, 0], resumed[0][1][-3000:] + resumed[1][1][-3000:]
    assert f"Resuming from {out / f'checkpoint-{SAVE_EVERY}'}" in resumed[0][1]
    after = [json.loads(line) for line in (out / "losses.jsonl").read_text().splitlines()][len(first):]
    assert [e["step"] for e in after] == list(range(SAVE_EVERY + 1, STEPS + 1))
    # The steps trained twice (after the checkpoint, before the kill) repeat the first run's losses exactly.
    assert [e["loss"] for e in after[:KILL_AT - SAVE_EVERY]] == [e["loss"] for e in first[SAVE_EVERY:]]
    ranks = [torch.load(out / f"rank{r}.pt") for r in (0, 1)]
    assert [(r["world_size"], r["step"]) for r in ranks] == [(2, STEPS), (2, STEPS)]
    for key, value in ranks[0]["state"].items():
        assert torch.equal(value, ranks[1]["state"][key]), key
