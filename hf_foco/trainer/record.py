"""What only the live run knows, recorded into its output directory at the end of training.

:func:`write_run_artifacts` is the one function the training scripts call at the end of a run: it saves
the trainer state, the training arguments, the stability summary and ``run_info.json`` (optimizer and
its hyperparameters, hardware, precision, schedule, dataset description), then renders the loss curve and
the model card from the directory (:func:`hf_foco.artifacts.render_run`).
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch
from transformers import Trainer

from ..artifacts import render_run
from ..artifacts.files import (
    RUN_INFO_FILE,
    STABILITY_FILE,
    TRAINER_STATE_FILE,
    TRAINING_ARGS_FILE,
    write_json,
)
from ..optim import get_optimizer
from .arguments import is_registry_optim
from .stability import monitor_of


def _hardware(world_size: int) -> str:
    if torch.cuda.is_available():
        return f"{world_size} x {torch.cuda.get_device_name(0)}"
    cpu = platform.processor() or platform.machine()
    return f"{world_size} process(es) on CPU ({cpu}, {os.cpu_count()} cores)"


def _optimizer_record(args) -> dict:
    name = getattr(args.optim, "value", args.optim)
    if is_registry_optim(name):
        spec = get_optimizer(name)
        return {"name": name, "class": f"{spec.cls.__module__}.{spec.cls.__qualname__}", "paper": spec.paper,
                "weight_decay_policy": args.weight_decay_policy, "hyperparameters": args.optimizer_kwargs()}
    hyper = {"lr": args.learning_rate, "weight_decay": args.weight_decay, "betas": (args.adam_beta1, args.adam_beta2),
             "eps": args.adam_epsilon}
    if args.optim_args:
        hyper["optim_args"] = args.optim_args
    return {"name": name, "class": "transformers built-in", "hyperparameters": hyper}


def run_info(trainer: Trainer, dataset_info: dict | None = None) -> dict:
    """The facts about a live run that its output directory does not otherwise keep."""
    args, model = trainer.args, trainer.model
    config = getattr(model, "config", None)
    return {
        "optimizer": _optimizer_record(args),
        "dataset": dict(dataset_info or {}),
        "hardware": _hardware(args.world_size),
        "precision": "bf16" if args.bf16 else "fp16" if args.fp16 else "fp32",
        "lr_scheduler_type": getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type),
        "warmup_steps": args.get_warmup_steps(trainer.state.max_steps),
        "max_grad_norm": args.max_grad_norm,
        "global_batch_size": args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size,
        "model_type": getattr(config, "model_type", None),
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "repo_id": args.hub_model_id,
        "model_name": (args.hub_model_id or Path(args.output_dir).name).split("/")[-1],
    }


def write_run_artifacts(trainer: Trainer, dataset_info: dict | None = None,
                        repo_id: str | None = None) -> dict[str, Path]:
    """Record the live run into ``trainer.args.output_dir``, then render its loss curve and model card.

    Call it on every rank at the end of ``train()``; only the main process writes. ``dataset_info`` is shown
    in the card's Data section (``tokens_seen`` comes from the trainer state when
    ``include_num_input_tokens_seen`` was on); ``repo_id`` is the repository the card's loading snippet
    names (default: ``--hub_model_id``). Returns: file name -> path of every file written.
    """
    if not trainer.is_world_process_zero():
        return {}
    out = Path(trainer.args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    trainer.save_state()
    (out / TRAINING_ARGS_FILE).write_text(trainer.args.to_json_string())
    write_json(out / RUN_INFO_FILE, run_info(trainer, dataset_info))
    written = {n: out / n for n in (TRAINER_STATE_FILE, TRAINING_ARGS_FILE, RUN_INFO_FILE)}
    monitor = monitor_of(trainer)
    if monitor is not None:
        monitor.write_summary(trainer.args, trainer.state)
        written[STABILITY_FILE] = out / STABILITY_FILE
    return {**written, **render_run(out, repo_id=repo_id)}
