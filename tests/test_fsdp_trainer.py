"""FocoTrainer on accelerate's own FSDP2 path, launched with recipes/accelerate_configs/fsdp.yaml on 2 gloo CPU
processes: the per-step machinery on sharded DTensor parameters, for foco, FOCUS, Signum and Lion.

accelerate turns FSDP on only for GPU process groups: ``AcceleratorState`` promotes ``MULTI_GPU`` to ``FSDP``
when the launcher exports ``ACCELERATE_USE_FSDP``, never ``MULTI_CPU``. Each rank here starts as the launcher
left it (gloo, ``--use_cpu``), then tells accelerate it is a GPU process (:func:`as_gpu_processes`, one switch
before the Trainer builds its ``Accelerator``). Everything after it is what a GPU run executes: the launcher's
FSDP settings from fsdp.yaml (``--num_processes 2`` on the command line, bf16 mixed precision, FULL_STATE_DICT,
CPU-RAM-efficient loading), accelerate's ``fsdp2_prepare_model`` (``fully_shard`` per GPT2Block and the
root), the Trainer's FSDP branches (clipping, checkpoint save and load through accelerate's FSDP helpers) and
hf_foco's optimizer, stability monitor, NaN guard and checkpoint checks. What only a GPU shows: NCCL, CUDA
streams and bf16 matrix units.

Checked per optimizer, on both ranks:

* the monitor's update_ratio and per-group update_rms/update_ratio equal the same quantities computed here
  from the gathered whole tensors in float64 (the monitor works on local shards with one all-reduce; fp32
  norms of a few thousand entries: relative error < 1e-5, TOLERANCE 1e-4), and both ranks log the same;
* a resume from the step-2 checkpoint ends bit-identical to the uninterrupted run (weights, logged losses);
* (foco) an infinite gradient entry on one rank's shard only is skipped on *both* ranks (the guard's
  all-reduce; without it the ranks would step differently and the collective checkpoint save would hang),
  and no checkpoint is saved at that step;
* K-FAC and FOP are refused at their arguments under this launch, naming FSDP.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import traceback
from pathlib import Path

import pytest
import torch
from helpers import REPO, common_args, text_dataset, tiny_gpt2
from transformers import TrainerCallback

WORLD, STEPS, SAVE_AT, POISON_AT = 2, 4, 2, 2
ELEMENTWISE = ("foco", "focus", "signum", "lion")
TOLERANCE = 1e-4


def as_gpu_processes() -> None:
    """The one switch (module docstring): from here on accelerate treats this gloo group as GPU processes, so
    the FSDP settings the launcher exported take effect. Call after the TrainingArguments set up devices."""
    from accelerate import PartialState
    from accelerate.utils import DistributedType

    PartialState._shared_state["distributed_type"] = DistributedType.MULTI_GPU


def full(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


class Expected(TrainerCallback):
    """What the monitor must log: the update and weight norms of every group, from gathered whole tensors."""

    def __init__(self):
        self.before, self.fields = {}, {}

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.before = {id(p): full(p.detach()).double() for p in model.parameters() if p.grad is not None}

    def on_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        from hf_foco.trainer import unwrap_optimizer

        if not self.before:
            return  # a skipped step: no gradients, no update
        fields, total = {}, [0.0, 0.0]
        for i, group in enumerate(unwrap_optimizer(optimizer).param_groups):
            params = [p for p in group["params"] if id(p) in self.before]
            delta = sum((full(p.detach()).double() - self.before[id(p)]).square().sum().item() for p in params)
            weight = sum(self.before[id(p)].square().sum().item() for p in params)
            fields[f"update_rms/group{i}"] = math.sqrt(delta / sum(p.numel() for p in params))
            fields[f"update_ratio/group{i}"] = math.sqrt(delta / weight)
            total = [total[0] + delta, total[1] + weight]
        fields["update_ratio"] = math.sqrt(total[0] / total[1])
        self.fields[state.global_step + 1] = fields


class PoisonOneShard(TrainerCallback):
    """At optimizer step ``step``, after clipping, one gradient entry of rank 1's shard becomes infinite."""

    def __init__(self, step: int):
        self.step = step

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        if state.global_step + 1 == self.step and args.process_index == 1:
            grad = next(p.grad for p in model.parameters() if p.grad is not None and p.grad.to_local().numel())
            grad.to_local().view(-1)[0] = float("inf")


def train(output_dir: Path, optim: str, resume: str | None = None, poison: bool = False, seed: int = 0) -> dict:
    from hf_foco.trainer import FocoTrainer, FocoTrainingArguments, unwrap_optimizer

    args = FocoTrainingArguments(**common_args(
        output_dir, optim=optim, learning_rate=3e-3, max_steps=STEPS, per_device_train_batch_size=4,
        save_strategy="steps", save_steps=SAVE_AT, bf16=True))
    assert args.world_size == WORLD, "not one process group: each rank trained alone"
    as_gpu_processes()
    expected = Expected()
    trainer = FocoTrainer(model=tiny_gpt2(seed), args=args, train_dataset=text_dataset(64), callbacks=[expected])
    if poison:
        trainer.callback_handler.callbacks.insert(0, PoisonOneShard(POISON_AT))  # before the monitor's guard
    trainer.train(resume_from_checkpoint=resume)
    optimizer = unwrap_optimizer(trainer.optimizer)
    return {"fsdp": trainer.is_fsdp_enabled,
            "param_types": sorted({type(p).__name__ for p in trainer.model.parameters()}),
            "params": {k: full(v.detach()).clone() for k, v in trainer.model.named_parameters()},
            "logs": [e for e in trainer.state.log_history if "loss" in e],
            "expected": expected.fields,
            "state_steps": sorted({int(s["step"].item()) for s in optimizer.state.values() if "step" in s}),
            "skipped": list(trainer.stability.skipped_steps),
            "checkpoints": sorted(p.name for p in Path(output_dir).glob("checkpoint-*"))}


def refusal(output_dir: Path, optim: str) -> str:
    from hf_foco.trainer import FocoTrainingArguments

    try:
        FocoTrainingArguments(**common_args(output_dir, optim=optim))
    except ValueError as err:
        return str(err)
    return "no error"


def run_all(out: Path) -> dict:
    results = {}
    for optim in ELEMENTWISE:
        for case, kwargs in ((optim, {}), (f"{optim}_resumed", {"seed": 1}),  # another init: only the checkpoint
                             *(((f"{optim}_poisoned", {"poison": True}),) if optim == "foco" else ())):
            if case.endswith("_resumed"):
                kwargs["resume"] = str(out / optim / f"checkpoint-{SAVE_AT}")
            try:
                results[case] = train(out / case, optim, **kwargs)
            except Exception:  # reported per case by the tests
                results[case] = traceback.format_exc()
    results["refusals"] = {optim: refusal(out / optim, optim) for optim in ("kfac", "fop")}
    return results


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    root = tmp_path_factory.mktemp("fsdp_trainer")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(REPO / "recipes" / "accelerate_configs" / "fsdp.yaml"), "--num_processes", str(WORLD), __file__,
           str(root)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=480)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return [torch.load(root / f"rank{r}.pt") for r in range(WORLD)]


def _case(ranks, case) -> list[dict]:
    for rank in ranks:
        assert isinstance(rank[case], dict), rank[case]  # else the traceback of the failure
    return [rank[case] for rank in ranks]


@pytest.mark.slow
@pytest.mark.parametrize("optim", ELEMENTWISE)
def test_monitor_logs_per_group_update_ratios_of_the_whole_tensors(ranks, optim):
    runs = _case(ranks, optim)
    assert all(r["fsdp"] and r["param_types"] == ["DTensor"] for r in runs)  # really sharded by accelerate
    logs, expected = runs[0]["logs"], runs[0]["expected"]
    assert [e["step"] for e in logs] == list(range(1, STEPS + 1))
    for entry in logs:
        want = expected[entry["step"]]
        assert {k for k in entry if k.startswith("update_")} == set(want)
        for key, value in want.items():
            assert entry[key] == pytest.approx(value, rel=TOLERANCE), (entry["step"], key)
    def numbers(run):
        return [{k: v for k, v in e.items() if k.startswith("update_") or k in ("loss", "grad_norm")} for e in run["logs"]]

    assert numbers(runs[1]) == numbers(runs[0])  # one collective: every rank logs the same numbers
    assert logs[0]["loss"] - logs[-1]["loss"] > 0.05  # it trained
    assert runs[0]["checkpoints"] == [f"checkpoint-{SAVE_AT}", f"checkpoint-{STEPS}"]


@pytest.mark.slow
@pytest.mark.parametrize("optim", ELEMENTWISE)
def test_resume_from_an_fsdp_checkpoint_is_exact(ranks, optim):
    uninterrupted, resumed = _case(ranks, optim)[0], _case(ranks, f"{optim}_resumed")[0]
    for name, value in uninterrupted["params"].items():
        assert torch.equal(resumed["params"][name], value), name
    after = [{k: e[k] for k in ("step", "loss", "grad_norm")} for e in uninterrupted["logs"] if e["step"] > SAVE_AT]
    assert [{k: e[k] for k in ("step", "loss", "grad_norm")} for e in resumed["logs"] if e["step"] > SAVE_AT] == after
    assert resumed["state_steps"] == uninterrupted["state_steps"] == [STEPS]


@pytest.mark.slow
def test_a_non_finite_gradient_on_one_shard_is_skipped_on_every_rank(ranks):
    for run in _case(ranks, "foco_poisoned"):
        assert run["skipped"] == [POISON_AT]
        assert run["state_steps"] == [STEPS - 1]  # the skipped step left every shard's state alone
        assert run["checkpoints"] == [f"checkpoint-{STEPS}"]  # none at the skipped step
        # The monitor logs a window of skipped steps as NaN (not 0); every other step trained on.
        assert [e["step"] for e in run["logs"] if not math.isfinite(e["loss"])] == [POISON_AT]
        assert all(torch.isfinite(v).all() for v in run["params"].values())


@pytest.mark.slow
@pytest.mark.parametrize("optim", ["kfac", "fop"])
def test_kronecker_optimizers_are_refused_under_the_fsdp_launch(ranks, optim):
    assert "FSDP shards the weight matrices" in ranks[0]["refusals"][optim]


if __name__ == "__main__":
    torch.set_num_threads(1)
    root = Path(sys.argv[1])
    results = run_all(root)
    torch.save(results, root / f"rank{os.environ['RANK']}.pt")
