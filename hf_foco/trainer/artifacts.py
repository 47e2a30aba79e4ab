"""What a finished run leaves next to its weights: the run record, stability summary, loss curve, card.

:func:`write_run_artifacts` is the one function the training scripts call at the end of a run, and that
``hf-foco push`` calls on a finished run directory:

* with a :class:`~transformers.Trainer` it first records what only the live run knows (trainer state,
  training arguments, optimizer hyperparameters, hardware, dataset description) into the output directory;
* from the directory alone it then draws ``loss_curve.png`` and renders ``README.md`` (the model card).
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

import torch
from transformers import Trainer

from ..optim import get_optimizer
from .arguments import is_registry_optim
from .model_card import render_model_card
from .plots import plot_loss_curve
from .stability import STABILITY_FILE, monitor_of

RUN_INFO_FILE = "run_info.json"
TRAINING_ARGS_FILE = "training_args.json"
TRAINER_STATE_FILE = "trainer_state.json"
LOSS_CURVE_FILE = "loss_curve.png"
MODEL_CARD_FILE = "README.md"


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


def _read_json(path: Path):
    with open(path) as f:
        return json.load(f)


def _write_json(path: Path, obj) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=2, default=list)


def _results(state: dict) -> dict:
    history = state.get("log_history", [])
    evals = [e for e in history if "eval_loss" in e]
    final_train = next((e for e in reversed(history) if "train_runtime" in e), {})
    out = {"steps": state.get("global_step"), "tokens_seen": state.get("num_input_tokens_seen") or None,
           "train_loss": final_train.get("train_loss"), "train_runtime": final_train.get("train_runtime")}
    if evals:
        out.update(eval_loss=evals[-1]["eval_loss"], eval_perplexity=evals[-1].get("eval_perplexity"),
                   eval_accuracy=evals[-1].get("eval_accuracy"))
    return out


def write_run_artifacts(run: Trainer | str | os.PathLike, dataset_info: dict | None = None,
                        repo_id: str | None = None) -> dict[str, Path]:
    """Write ``stability.json``, ``loss_curve.png`` and ``README.md`` (and, from a live Trainer,
    ``trainer_state.json``, ``training_args.json``, ``run_info.json``) into the run's output directory.

    Args:
        run: the Trainer at the end of ``train()`` (call on every rank; only the main process writes), or
            the output directory of a run that was once passed here as a Trainer.
        dataset_info: shown in the card's Data section, e.g. ``{"name": "roneneldan/TinyStories",
            "tokenizer": "gpt2", "sequence_length": 512, "train_tokens": 4.7e8}``; ``tokens_seen`` is
            taken from the trainer state when ``include_num_input_tokens_seen`` was on. Given with a
            directory, it replaces the recorded description.
        repo_id: the Hub repository the card's loading snippet names (default: ``--hub_model_id``).

    Returns: file name -> path of every file written.
    """
    written: dict[str, Path] = {}
    if isinstance(run, Trainer):
        if not run.is_world_process_zero():
            return written
        out = Path(run.args.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        run.save_state()
        (out / TRAINING_ARGS_FILE).write_text(run.args.to_json_string())
        _write_json(out / RUN_INFO_FILE, run_info(run, dataset_info))
        monitor = monitor_of(run)
        if monitor is not None:
            monitor.write_summary(run.args, run.state)
        written.update({n: out / n for n in (TRAINER_STATE_FILE, TRAINING_ARGS_FILE, RUN_INFO_FILE)})
        if monitor is not None:
            written[STABILITY_FILE] = out / STABILITY_FILE
    else:
        out = Path(run)
    missing = [n for n in (TRAINER_STATE_FILE, RUN_INFO_FILE) if not (out / n).is_file()]
    if missing:
        raise FileNotFoundError(f"{out} is not a finished hf_foco run: {', '.join(missing)} missing. Call "
                                "write_run_artifacts(trainer) at the end of training (scripts/run_pretrain.py does).")
    state, record = _read_json(out / TRAINER_STATE_FILE), _read_json(out / RUN_INFO_FILE)
    if dataset_info is not None and not isinstance(run, Trainer):
        record["dataset"] = dict(dataset_info)
        _write_json(out / RUN_INFO_FILE, record)
    if repo_id is not None:
        record.update(repo_id=repo_id, model_name=repo_id.split("/")[-1])
    record["results"] = _results(state)
    if (out / STABILITY_FILE).is_file():
        record["stability"] = _read_json(out / STABILITY_FILE)
    if plot_loss_curve(state.get("log_history", []), out / LOSS_CURVE_FILE, title=record.get("model_name") or ""):
        record["loss_curve"] = LOSS_CURVE_FILE
        written[LOSS_CURVE_FILE] = out / LOSS_CURVE_FILE
    (out / MODEL_CARD_FILE).write_text(render_model_card(record))
    written[MODEL_CARD_FILE] = out / MODEL_CARD_FILE
    return written
