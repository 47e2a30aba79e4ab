"""What only the live run knows, recorded into its output directory at the end of training.

:func:`write_run_artifacts` is the one function the training scripts call at the end of a run: it saves
the trainer state, the training arguments, the stability summary and ``run_info.json`` (optimizer and
its hyperparameters, hardware, precision, schedule, dataset description, and the card's metadata: the
arguments of transformers' ``Trainer.create_model_card``), then renders the loss curve and the model card
from the directory (:func:`hf_foco.artifacts.render_run`).
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch
from transformers import Trainer

from ..artifacts import render_run
from ..optim import get_optimizer
from ..rundir import (
    NATIVE_CLASS,
    RUN_INFO_FILE,
    STABILITY_FILE,
    TRAINER_STATE_FILE,
    TRAINING_ARGS_FILE,
    write_json,
)
from .arguments import is_registry_optim
from .stability import monitor_of
from .task import CAUSAL_LM_TASK, is_causal_lm, model_task


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
    return {"name": name, "class": NATIVE_CLASS, "hyperparameters": hyper}


class _Infer:
    """``finetuned_from`` not given: inferred from the model, as transformers' card does."""

    def __repr__(self) -> str:
        return "INFER"


INFER = _Infer()
CARD_FIELDS = ("language", "license", "tags", "model_name", "finetuned_from", "tasks", "dataset_tags", "dataset",
               "dataset_args")


def _trains_causal_lm(trainer: Trainer) -> bool:
    """FocoTrainer's decision (:func:`.task.is_causal_lm`), made alike for another Trainer."""
    decided = getattr(trainer, "causal_lm", None)
    return is_causal_lm(trainer.model, getattr(trainer.args, "causal_lm", None)) if decided is None else decided


def _listify(value) -> list:
    return [] if value is None else [value] if isinstance(value, str) else list(value)


def card_metadata(trainer: Trainer, language=None, license=None, tags=None, model_name=None, finetuned_from=INFER,
                  tasks=None, dataset_tags=None, dataset=None, dataset_args=None) -> dict:
    """The model card's metadata from the arguments of transformers' ``Trainer.create_model_card``, with its
    defaults: ``finetuned_from`` omitted is the model's ``config._name_or_path`` when that names a Hub model
    (not a local folder); ``tasks`` omitted is the task of the model's class (:func:`.task.model_task`:
    text-generation for a causal LM); ``license`` omitted is ``--license``; the model's ``model_tags`` join
    ``tags``. ``dataset_tags`` are Hub dataset ids (the card's ``datasets``), ``dataset`` their display names and
    ``dataset_args`` their configurations, one per id.

    ``finetuned_from=None`` given explicitly means trained from scratch (``run_clm.py`` passes
    ``model_args.model_name_or_path``, None for a model built from a config; transformers would still infer
    "a fine-tuned version of gpt2" from a config loaded with ``--config_name gpt2``).
    """
    if finetuned_from is INFER:
        name = getattr(getattr(trainer.model, "config", None), "_name_or_path", "") or ""
        finetuned_from = name if name and not os.path.isdir(name) else None
    finetuned_from = finetuned_from or None  # "" is no model
    tags = [*_listify(tags), *(t for t in getattr(trainer.model, "model_tags", None) or () if t not in _listify(tags))]
    task = CAUSAL_LM_TASK if _trains_causal_lm(trainer) else model_task(trainer.model)
    return {"language": _listify(language) or None, "license": license or getattr(trainer.args, "license", None),
            "tags": tags, "model_name": model_name, "finetuned_from": finetuned_from,
            # The Hub's base_model must name a Hub model: a local folder stays in the prose only.
            "base_model": finetuned_from if finetuned_from and not os.path.isdir(finetuned_from) else None,
            "tasks": _listify(tasks) or _listify(task), "dataset_tags": _listify(dataset_tags),
            "dataset": _listify(dataset) or _listify(dataset_tags), "dataset_args": _listify(dataset_args)}


def _importable_class(model) -> str | None:
    """The model's class name when ``from transformers import NAME`` gives that class (the card's snippet)."""
    import transformers

    name = type(model).__name__
    return name if getattr(transformers, name, None) is type(model) else None


def _processor_class(processing_class) -> str | None:
    """The Auto class that loads ``processing_class`` back (for the card's loading snippet)."""
    from transformers import PreTrainedTokenizerBase, ProcessorMixin
    from transformers.image_processing_utils import BaseImageProcessor

    for base, auto in ((ProcessorMixin, "AutoProcessor"), (PreTrainedTokenizerBase, "AutoTokenizer"),
                       (BaseImageProcessor, "AutoImageProcessor")):
        if isinstance(processing_class, base):
            return auto
    return None


def run_info(trainer: Trainer, dataset_info: dict | None = None, card: dict | None = None) -> dict:
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
        "causal_lm": _trains_causal_lm(trainer),
        "architecture": _importable_class(model),
        "processor": _processor_class(getattr(trainer, "processing_class", None)),
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "repo_id": args.hub_model_id,
        "model_name": (args.hub_model_id or Path(args.output_dir).name).split("/")[-1],
        "card": card_metadata(trainer, **(card or {})),
    }


def write_run_artifacts(trainer: Trainer, dataset_info: dict | None = None, repo_id: str | None = None,
                        **card) -> dict[str, Path]:
    """Record the live run into ``trainer.args.output_dir``, then render its loss curve and model card.

    Call it on every rank at the end of ``train()``; only the main process writes. ``dataset_info`` is shown
    in the card's Data section (``tokens_seen`` comes from the trainer state when
    ``include_num_input_tokens_seen`` was on); ``repo_id`` is the repository the card's loading snippet
    names (default: ``--hub_model_id``). ``card`` takes the keyword arguments of transformers'
    ``Trainer.create_model_card`` (``finetuned_from``, ``tasks``, ``dataset``, ``tags``, ``model_name``,
    ``language``, ``license``, ``dataset_tags``, ``dataset_args``; see :func:`card_metadata`).
    Returns: file name -> path of every file written.
    """
    unknown = set(card) - set(CARD_FIELDS)
    if unknown:
        raise TypeError(f"Unknown model card argument(s) {sorted(unknown)}: the card takes {', '.join(CARD_FIELDS)}.")
    if not trainer.is_world_process_zero():
        return {}
    out = Path(trainer.args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    trainer.save_state()
    (out / TRAINING_ARGS_FILE).write_text(trainer.args.to_json_string())
    write_json(out / RUN_INFO_FILE, run_info(trainer, dataset_info, card))
    written = {n: out / n for n in (TRAINER_STATE_FILE, TRAINING_ARGS_FILE, RUN_INFO_FILE)}
    monitor = monitor_of(trainer)
    if monitor is not None:
        monitor.write_summary(trainer.args, trainer.state)
        written[STABILITY_FILE] = out / STABILITY_FILE
    return {**written, **render_run(out, repo_id=repo_id)}
