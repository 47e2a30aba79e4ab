"""The extension point for Trainers that are not FocoTrainer: `optimizer_cls_and_kwargs` and `trainer_optimizers`
with transformers' own Trainer and TRL's SFTTrainer, K-FAC/FOP refused there; and an unmodified TRL script under
`hf-foco run --optim foco` in a fresh interpreter, as the README says."""

import json
import os
import subprocess
import sys

import pytest
import torch
from datasets import Dataset
from helpers import REPO, STOCK_SFT, common_args, sentences, text_dataset, tiny_gpt2, tiny_tokenizer
from transformers import Trainer, TrainingArguments

import hf_foco
from hf_foco.optim import FOCUS16bit, Lion, get_optimizer, param_groups
from hf_foco.trainer import unwrap_optimizer

torch.set_num_threads(1)
LR = 1e-3


def assert_registry_optimizer(optimizer, cls, model, lr, weight_decay):
    """``optimizer`` is ``cls`` at ``lr`` over nanoGPT's groups of ``model`` (decay on >= 2-D weights only)."""
    assert type(optimizer) is cls
    expected = param_groups(model, weight_decay)
    assert [[id(p) for p in g["params"]] for g in optimizer.param_groups] == \
        [[id(p) for p in g["params"]] for g in expected]
    assert [g["weight_decay"] for g in optimizer.param_groups] == [weight_decay, 0.0]
    assert all(g.get("initial_lr", g["lr"]) == lr for g in optimizer.param_groups)


def test_optimizer_cls_and_kwargs_builds_the_registry_optimizer_inside_a_stock_trainer(tmp_path):
    model = tiny_gpt2()
    before = [p.detach().clone() for p in model.parameters()]
    trainer = Trainer(model=model, args=TrainingArguments(**common_args(tmp_path, max_steps=3)),
                      train_dataset=text_dataset(24),
                      optimizer_cls_and_kwargs=hf_foco.optimizer_cls_and_kwargs("foco", lr=LR, gamma=0.3))
    trainer.train()
    optimizer = unwrap_optimizer(trainer.optimizer)
    assert_registry_optimizer(optimizer, FOCUS16bit, model, LR, get_optimizer("foco").defaults["weight_decay"])
    assert optimizer.defaults["gamma"] == 0.3 and optimizer.defaults["betas"] == (0.9, 0.99)
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_trainer_optimizers_hands_the_trainer_an_optimizer_and_leaves_it_the_schedule(tmp_path):
    model = tiny_gpt2()
    optimizers = hf_foco.trainer_optimizers("lion", model, lr=LR, weight_decay=0.1)
    assert optimizers[1] is None
    args = TrainingArguments(**common_args(tmp_path, max_steps=4, lr_scheduler_type="linear"))
    trainer = Trainer(model=model, args=args, train_dataset=text_dataset(32), optimizers=optimizers)
    trainer.train()
    assert_registry_optimizer(unwrap_optimizer(trainer.optimizer), Lion, model, LR, 0.1)
    lrs = [e["learning_rate"] for e in trainer.state.log_history if "learning_rate" in e]
    assert lrs == pytest.approx([LR * (1 - s / 4) for s in range(4)])  # the Trainer's linear schedule on lr


@pytest.mark.parametrize("name, needs", [("kfac", "curvature batches from the trainer's layer hooks"),
                                         ("fop", "curvature batches from the trainer's layer hooks and its "
                                                 "half-batch training step")])
def test_optimizers_that_need_the_trainer_refuse_the_extension_point(name, needs):
    message = f"Optimizer '{name}' needs {needs}, which transformers' Trainer does not provide: train it with " \
              f"FocoTrainer \\(`hf-foco run SCRIPT.py --optim {name}`"
    with pytest.raises(ValueError, match=message):
        hf_foco.optimizer_cls_and_kwargs(name)
    with pytest.raises(ValueError, match=message):
        hf_foco.trainer_optimizers(name, tiny_gpt2())


def test_bad_hyperparameters_fail_when_asked_not_at_the_first_step():
    with pytest.raises(ValueError, match="Unknown hyperparameter\\(s\\) for optimizer 'foco': 'gama'"):
        hf_foco.optimizer_cls_and_kwargs("foco", gama=0.2)
    with pytest.raises(ValueError, match="--optim foco: .*lr"):
        hf_foco.optimizer_cls_and_kwargs("foco", lr=-1.0)
    with pytest.raises(ValueError, match="weight_decay_policy"):
        hf_foco.optimizer_cls_and_kwargs("foco", weight_decay_policy="nano")


# -- TRL ------------------------------------------------------------------------------------------------------

SFT_ARGS = ["--max_steps", "6", "--per_device_train_batch_size", "4", "--logging_steps", "1", "--save_strategy", "no",
            "--use_cpu", "--seed", "0", "--disable_tqdm", "true", "--report_to", "none", "--bf16", "false",
            "--max_length", "16", "--eos_token", "<pad>"]


@pytest.mark.slow
def test_trl_sft_trainer_takes_the_extension_point(tmp_path):
    trl = pytest.importorskip("trl")
    model = tiny_gpt2(vocab_size=32)
    data = Dataset.from_dict({"text": sentences(64)})
    args = trl.SFTConfig(**common_args(tmp_path, max_steps=6, per_device_train_batch_size=4), bf16=False,
                         max_length=16, eos_token="<pad>")
    trainer = trl.SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tiny_tokenizer(),
                             optimizer_cls_and_kwargs=hf_foco.optimizer_cls_and_kwargs("foco", lr=LR))
    trainer.train()
    assert_registry_optimizer(unwrap_optimizer(trainer.optimizer), FOCUS16bit, model, LR, 0.2)
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert len(losses) == 6 and all(0 < loss < 10 for loss in losses)


@pytest.mark.slow
def test_an_unmodified_trl_script_takes_every_hf_foco_optimizer_under_hf_foco_run(tmp_path):
    """In a fresh interpreter, as a user runs it: TRL is imported by the script, after `hf-foco run` put
    hf_foco's classes into transformers, so SFTTrainer and SFTConfig derive from them. A probe around the
    unmodified script records which trainer built which optimizer at which lr."""
    pytest.importorskip("trl")
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import json, runpy, sys\n"
        "from hf_foco.trainer import FocoTrainer, unwrap_optimizer\n"
        "built = []\n"
        "create = FocoTrainer.create_optimizer\n"
        "def spy(self, model=None):\n"
        "    optimizer = unwrap_optimizer(create(self, model))\n"
        "    built.append([type(self).__name__, type(optimizer).__name__, optimizer.param_groups[0]['lr']])\n"
        "    return optimizer\n"
        "FocoTrainer.create_optimizer = spy\n"
        "sys.argv = sys.argv[1:]\n"
        "runpy.run_path(sys.argv[0], run_name='__main__')\n"
        "print(json.dumps(built))\n")
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "HF_DATASETS_CACHE": str(tmp_path / "hf_datasets")}
    out = tmp_path / "sft-foco"
    proc = subprocess.run([sys.executable, "-m", "hf_foco.run", str(probe), str(STOCK_SFT), *SFT_ARGS, "--optim",
                           "foco", "--learning_rate", str(LR), "--output_dir", str(out)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == [["SFTTrainer", "FOCUS16bit", LR]]
    assert json.loads((out / "stability.json").read_text())["status"] == "ok"  # FocoTrainer's monitor ran
    assert (out / "model.safetensors").is_file()


@pytest.mark.slow
def test_trl_classes_derived_before_install_keep_transformers_behaviour(tmp_path):
    """TRL imported first (a notebook's order), in a fresh interpreter: install() cannot re-parent classes that
    already exist, so they refuse hf_foco's names; the extension point is their way in."""
    pytest.importorskip("trl")
    late = tmp_path / "late.py"
    late.write_text(
        "import json\n"
        "from trl import SFTConfig, SFTTrainer\n"
        "import hf_foco\n"
        "hf_foco.install()\n"
        "try:\n"
        "    SFTConfig('unused', optim='foco')\n"
        "    refused = False\n"
        "except ValueError:\n"
        "    refused = True\n"
        "print(json.dumps([issubclass(SFTTrainer, hf_foco.FocoTrainer), refused]))\n")
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, str(late)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == [False, True]
