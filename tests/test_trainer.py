"""FocoTrainer: every registry optimizer trains a tiny GPT-2, resumes bit-exactly, groups parameters as
documented, drives optimizers with special training steps, and reports LM metrics."""

import math

import numpy as np
import pytest
import torch
from helpers import common_args, text_dataset, tiny_gpt2
from transformers import HfArgumentParser

from hf_foco.optim import list_optimizers, registry
from hf_foco.trainer import FocoTrainer, FocoTrainingArguments, load_lm_metric, unwrap_optimizer

torch.set_num_threads(1)
SPECS = list_optimizers()


def lr_for(spec):
    """A tiny model in 10 steps needs a larger step than GPT-2 scale; second-order optimizers keep theirs."""
    return None if spec.needs_layer_hooks else 3e-3


def train_and_eval(args):
    trainer = FocoTrainer(model=tiny_gpt2(), args=args, train_dataset=text_dataset(40),
                          eval_dataset=text_dataset(8, seed=1))
    before = trainer.evaluate()["eval_loss"]
    trainer.train()
    return before, trainer.evaluate()["eval_loss"]


TRAIN = {"max_steps": 10, "gradient_accumulation_steps": 2, "per_device_train_batch_size": 4,
         "lr_scheduler_type": "cosine", "warmup_steps": 2, "max_grad_norm": 1.0}


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_every_registry_optimizer_lowers_the_held_out_loss(spec, tmp_path):
    args = FocoTrainingArguments(**common_args(tmp_path, optim=spec.name, learning_rate=lr_for(spec), **TRAIN))
    before, after = train_and_eval(args)
    assert after < before - 0.1


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_command_line_optim_lowers_the_held_out_loss(spec, tmp_path):
    argv = ["--optim", spec.name, "--output_dir", str(tmp_path), "--report_to", "none", "--use_cpu",
            "--disable_tqdm", "true", "--save_strategy", "no", "--seed", "0", "--logging_steps", "1",
            *[str(x) for k, v in TRAIN.items() for x in (f"--{k}", v)]]
    if lr_for(spec) is not None:
        argv += ["--learning_rate", str(lr_for(spec))]
    (args,) = HfArgumentParser(FocoTrainingArguments).parse_args_into_dataclasses(argv)
    before, after = train_and_eval(args)
    assert after < before - 0.1


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains(precision, tmp_path):
    args = FocoTrainingArguments(**common_args(tmp_path, optim="foco", learning_rate=3e-3, **{precision: True}, **TRAIN))
    before, after = train_and_eval(args)
    assert after < before - 0.1


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_resume_reproduces_the_uninterrupted_run_bit_for_bit(spec, tmp_path):
    """6 steps straight vs 3 steps, checkpoint, resume, 3 more: dropout, shuffling and foco's stochastic
    rounding all draw random numbers, so this also checks the RNG state travels with the checkpoint."""
    def make():
        args = FocoTrainingArguments(**common_args(
            tmp_path, optim=spec.name, learning_rate=lr_for(spec), max_steps=6, save_strategy="steps",
            save_steps=3, gradient_accumulation_steps=2, per_device_train_batch_size=4, logging_steps=2))
        return FocoTrainer(model=tiny_gpt2(), args=args, train_dataset=text_dataset(32))

    straight = make()
    straight.train()
    expected = {k: v.clone() for k, v in straight.model.state_dict().items()}
    resumed = make()
    resumed.train(resume_from_checkpoint=str(tmp_path / "checkpoint-3"))
    got = resumed.model.state_dict()
    assert resumed.state.global_step == 6
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    at_checkpoint = tiny_gpt2().state_dict()  # sanity: the parameters did move
    assert not all(torch.equal(expected[k], at_checkpoint[k]) for k in expected)


def _grouped_names(trainer):
    trainer.create_optimizer()
    names = dict((id(p), n) for n, p in trainer.model.named_parameters())
    return [({names[id(p)] for p in g["params"]}, g["weight_decay"]) for g in unwrap_optimizer(trainer.optimizer).param_groups]


@pytest.mark.parametrize("policy", ["nanogpt", "no_bias_or_norm"])
def test_parameter_grouping_policy(policy, tmp_path):
    args = FocoTrainingArguments(**common_args(tmp_path, optim="foco", weight_decay=0.3, weight_decay_policy=policy))
    trainer = FocoTrainer(model=tiny_gpt2(), args=args)
    params = dict(trainer.model.named_parameters())
    if policy == "nanogpt":
        decayed = {n for n, p in params.items() if p.dim() >= 2}
    else:
        decayed = {n for n in params if not (n.endswith("bias") or ".ln_" in n or n.startswith("transformer.ln_f"))}
    assert _grouped_names(trainer) == [(decayed, 0.3), (set(params) - decayed, 0.0)]


class HookedSGD(torch.optim.SGD):
    """Stands in for K-FAC: built with the model, attached after prepare, fed curvature batches every 2nd step."""

    def __init__(self, params, model, lr=0.1):
        super().__init__(params, lr=lr)
        self.built_with, self.attached, self.curvature_batches, self.steps_done = model, [], [], 0

    def attach(self, model):
        self.attached.append((model, self.steps_done))

    @property
    def curvature_due(self):
        return self.steps_done % 2 == 0

    def update_curvature(self, inputs):
        self.curvature_batches.append((self.steps_done, inputs["input_ids"].shape[0]))

    def step(self, closure=None):
        self.steps_done += 1
        return super().step(closure)


def test_optimizer_with_layer_hooks_is_attached_once_and_fed_curvature_when_due(tmp_path, monkeypatch):
    monkeypatch.setitem(registry._REGISTRY, "hooked", registry.OptimizerSpec(
        name="hooked", cls=HookedSGD, defaults={"lr": 0.1}, needs_layer_hooks=True))
    args = FocoTrainingArguments(**common_args(tmp_path, optim="hooked", max_steps=5, gradient_accumulation_steps=2,
                                               per_device_train_batch_size=4))
    model = tiny_gpt2()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = FocoTrainer(model=model, args=args, train_dataset=text_dataset(48))
    trainer.train()
    opt = unwrap_optimizer(trainer.optimizer)
    assert opt.built_with is model
    assert len(opt.attached) == 1 and opt.attached[0][1] == 0  # once, before its first step
    # the first micro-batch (4 rows) of every due step, once per step, not once per micro-batch
    assert opt.curvature_batches == [(0, 4), (2, 4), (4, 4)]
    assert not torch.equal(start["transformer.h.0.mlp.c_fc.weight"], model.transformer.h[0].mlp.c_fc.weight)


def test_eval_metrics_match_a_brute_force_computation(tmp_path):
    args = FocoTrainingArguments(**common_args(tmp_path, optim="foco", per_device_eval_batch_size=4))
    model, data = tiny_gpt2().eval(), text_dataset(8, seed=1)
    metrics = FocoTrainer(model=model, args=args, eval_dataset=data).evaluate()
    ids = torch.tensor(data["input_ids"])
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    logp = torch.log_softmax(logits[:, :-1].double(), -1)
    nll = -logp.gather(-1, ids[:, 1:, None]).mean().item()
    accuracy = (logits[:, :-1].argmax(-1) == ids[:, 1:]).double().mean().item()
    assert metrics["eval_loss"] == pytest.approx(nll, rel=1e-5)  # the loss divides by T-1 positions, not T
    assert metrics["eval_perplexity"] == pytest.approx(math.exp(nll), rel=1e-5)
    assert metrics["eval_accuracy"] == pytest.approx(accuracy)


def test_metric_module_loads_offline_by_path_and_ignores_masked_labels(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    metric = load_lm_metric()
    predictions = np.array([[5, 7, 1, 0], [2, 2, 2, 2]])
    references = np.array([[9, 5, 7, 3], [-100, 2, -100, 4]])
    nll = np.array([[1.0, 2.0, 3.0, 0.0], [9.0, 9.0, 4.0, 0.0]])
    # next-token pairs: (5,5) (7,7) (1,3) ; row 2: position 0 -> 2 ok, 1 masked, 2 -> 4 wrong
    result = metric.compute(predictions=predictions, references=references, nll=nll)
    assert result["accuracy"] == pytest.approx(3 / 5)
    assert result["nll"] == pytest.approx((1 + 2 + 3 + 9 + 4) / 5)
    assert result["perplexity"] == pytest.approx(math.exp(19 / 5))
