"""The GPT-2 pretraining job: ``accelerate launch scripts/run_pretrain.py RECIPE.yaml [--key value ...]``
(or ``hf-foco train RECIPE.yaml ...``; both call :func:`main`).

A recipe is a YAML file of ``ModelArguments``, ``DataArguments`` and ``FocoTrainingArguments`` fields
(alignment-handbook style, read by :mod:`hf_foco.recipe`); command-line keys override it. Everything that
can be wrong with the inputs (unknown keys, data, presets, block size) fails before the first step, and a
finished run leaves a
safetensors checkpoint with its tokenizer, the eval loss and perplexity, the loss curve, the stability
summary and a model card in ``output_dir``. Rerunning a command whose run was killed continues it from the
latest complete checkpoint in ``output_dir`` (see :mod:`hf_foco.trainer.checkpoints`).
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import math
import os
import sys
from pathlib import Path

import torch
from transformers import HfArgumentParser

from .allocator import tune_allocator
from .data import DataArguments, collate_blocks, prepare_lm_data
from .models import ModelArguments, build_model, model_config, positions
from .recipe import describe_recipe_usage, parse_recipe_args


def _parser(prog: str | None = None):
    from .trainer import FocoTrainingArguments

    parser = HfArgumentParser((ModelArguments, DataArguments, FocoTrainingArguments))
    describe_recipe_usage(parser, "Pretrain GPT-2 with any hf_foco or transformers optimizer from a recipe.",
                          "accelerate launch --config_file recipes/accelerate_configs/cpu.yaml "
                          "scripts/run_pretrain.py recipes/gpt2-nano/foco.yaml --max_steps 100", prog=prog)
    return parser


def parse_args(argv: list[str] | None = None, prog: str | None = None):
    """``[RECIPE.yaml] [--key value ...]`` -> (ModelArguments, DataArguments, FocoTrainingArguments).

    Launched as several processes on a machine without GPU, ``use_cpu`` defaults to true (gloo DDP). A
    recipe's ``tokens_per_step`` sets the gradient accumulation for the launch's number of processes
    (:func:`~hf_foco.trainer.batch.derive_accumulation`). ``prog`` names the command in ``--help``
    (default: the script's file name).
    """
    from .trainer.batch import derive_accumulation

    parser = _parser(prog)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.accelerator.is_available():
        # A multi-process launch on a machine without accelerator (recipes/accelerate_configs/cpu_ddp.yaml):
        # only CPU DDP can work, and without use_cpu each rank would run alone.
        parser.set_defaults(use_cpu=True)
    model_args, data_args, training_args = parse_recipe_args(parser, sys.argv[1:] if argv is None else argv)
    derive_accumulation(training_args, data_args.block_size)
    return model_args, data_args, training_args


def check_output_dir(output_dir: str) -> None:
    """Fail now, not at the first save after hours of training, when ``output_dir`` cannot be written."""
    from .artifacts.files import unwritable_dir

    if problem := unwritable_dir(output_dir):
        raise ValueError(f"--output_dir {output_dir} cannot hold the run's checkpoints: {problem}. Pass a "
                         "--output_dir you can write to.")


def build_trainer(model_args: ModelArguments, data_args: DataArguments, training_args, callbacks=None):
    """Config, data, tokenizer and model -> a ready ``FocoTrainer`` (and the data description).

    The output directory and an explicitly named checkpoint to resume from are checked first, so a run
    that could not save, or could not resume, fails before the data is even read.
    """
    from .trainer import FocoTrainer
    from .trainer.checkpoints import LATEST, checkpoint_corruption, missing_resume_files

    config = model_config(model_args, data_args.block_size)
    check_output_dir(training_args.output_dir)
    resume = training_args.resume_from_checkpoint
    if resume is not None and str(resume).lower() not in LATEST:
        need_optimizer = not training_args.reset_optimizer_state
        if problem := checkpoint_corruption(resume) or missing_resume_files(resume, need_optimizer):
            fix = ("" if not (need_optimizer and "optimizer" in problem) else
                   ", or pass --reset_optimizer_state true to continue its weights with a fresh optimizer state")
            raise ValueError(f"--resume_from_checkpoint {resume} cannot be resumed from: {problem}. Resume from "
                             f"another, intact checkpoint-N directory of the run instead{fix}.")
    if data_args.streaming and training_args.max_steps <= 0:
        raise ValueError("A streamed dataset has no length: set --max_steps.")
    with training_args.main_process_first(desc="preparing data"):
        data = prepare_lm_data(data_args)
    tokenizer = data.tokenizer
    if model_args.model_name_or_path:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(model_args.model_name_or_path)
        if len(tokenizer) > model.config.vocab_size:
            raise ValueError(f"The tokenizer has {len(tokenizer)} tokens but {model_args.model_name_or_path!r} "
                             f"only {model.config.vocab_size} embeddings: pass its own tokenizer with --tokenizer_name.")
    else:
        config.vocab_size = len(tokenizer)
        config.bos_token_id = config.eos_token_id = tokenizer.eos_token_id
        config.pad_token_id = tokenizer.pad_token_id
        if not data_args.tokenizer_name and positions(config):  # ours: record the context it serves
            tokenizer.model_max_length = positions(config)
        model = build_model(config, seed=training_args.seed)
    trainer = FocoTrainer(model=model, args=training_args, train_dataset=data.train, eval_dataset=data.validation,
                          data_collator=collate_blocks, processing_class=tokenizer, callbacks=callbacks)
    return trainer, data


def run_settings(model_args: ModelArguments, data_args: DataArguments) -> dict:
    """The model and data a run trains, as its checkpoints record them: a resume that changes either
    (another --config_overrides, other or edited --train_files) is refused instead of mixing two runs."""
    data = {k: v for k, v in dataclasses.asdict(data_args).items() if k != "data_cache_dir"}
    files = sorted({f for pattern in (data_args.train_files or []) for f in glob.glob(pattern) if os.path.isfile(f)})
    sizes = json.dumps([(f, os.path.getsize(f)) for f in files])
    data["train_files_fingerprint"] = hashlib.sha256(sizes.encode()).hexdigest()[:16]  # names and sizes
    return {"model": dataclasses.asdict(model_args), "data": data}


def check_resume(checkpoint: str, model_args, data_args, training_args) -> None:
    """Refuse a resume whose settings differ from the checkpoint's, naming each difference and the fix."""
    from .trainer.checkpoints import optimizer_change_message, resume_differences

    current = {**run_settings(model_args, data_args), "optimizer": training_args.optimizer_record(),
               "training": training_args.training_record()}
    changed = resume_differences(checkpoint, current)
    optimizer = changed.pop("optimizer", None)
    if changed:
        raise ValueError(f"{checkpoint} was saved with other settings than this run's "
                         f"({'; '.join(f'{k}: {v}' for k, v in changed.items())}), which a resume would ignore or mix. "
                         "Rerun with the checkpoint's settings, or pass a new --output_dir (or --overwrite_output_dir "
                         "true) to start over with these.")
    if optimizer and not training_args.reset_optimizer_state:
        raise ValueError(optimizer_change_message(checkpoint, optimizer))


def _finished(checkpoint: str, training_args) -> int | None:
    """The step of ``checkpoint`` when it already ends the run (a finished run rerun, or one killed after
    its last checkpoint), else None."""
    state = json.loads((Path(checkpoint) / "trainer_state.json").read_text())
    target = training_args.max_steps if training_args.max_steps > 0 else state.get("max_steps") or 0
    return state["global_step"] if 0 < target <= state["global_step"] else None


def _nonfinite_result(trainer, metrics: dict) -> str | None:
    """Why the finished run is not a result (non-finite weights or eval loss), or None."""
    if not math.isfinite(metrics.get("eval_loss", 0.0)):
        return f"the eval loss is {metrics['eval_loss']}"
    bad = [name for name, p in trainer.model.named_parameters() if not torch.isfinite(p).all()]
    return f"the final weights are not finite ({bad[0]}{' ...' if len(bad) > 1 else ''})" if bad else None


def main(argv: list[str] | None = None, callbacks=None) -> int:
    """Parse, prepare, train, evaluate, save; ``callbacks`` are extra ``TrainerCallback`` objects.

    Bad input (recipe, data, model, arguments) exits with a one-line message before training starts.
    """
    from transformers.utils import logging

    from .trainer import write_run_artifacts
    from .trainer.checkpoints import checkpoint_to_resume, clear_checkpoints

    tune_allocator()  # before the first large tensor: the training step then reuses mapped memory
    try:  # bad input fails here, before any training, as one line instead of a traceback
        model_args, data_args, training_args = parse_args(argv)
        logging.set_verbosity(training_args.get_process_log_level())
        # A rerun of a killed command continues from its latest complete checkpoint (never a partial one).
        finished = None
        checkpoint = checkpoint_to_resume(training_args.output_dir, training_args.resume_from_checkpoint,
                                          training_args.world_size, training_args.overwrite_output_dir)
        trainer, data = build_trainer(model_args, data_args, training_args, callbacks)
        if checkpoint is not None:
            check_resume(checkpoint, model_args, data_args, training_args)
            finished = _finished(checkpoint, training_args)
            out = Path(training_args.output_dir)
            if finished is not None and (out / "eval_results.json").is_file() and (out / "model.safetensors").is_file():
                print(f"Nothing to do: the run in {out} already finished at step {finished} ({checkpoint}). Raise "
                      "--max_steps to train further, or pass a new --output_dir to train again.")
                return 0
    except (ValueError, FileNotFoundError) as err:
        raise SystemExit(f"run_pretrain: error: {err}") from err
    trainer.run_settings = run_settings(model_args, data_args)
    if training_args.overwrite_output_dir and trainer.is_world_process_zero():
        clear_checkpoints(training_args.output_dir)
    if checkpoint is not None and finished is not None:
        # Killed after its last checkpoint: finish from it without training another step.
        from transformers import TrainerState

        trainer._load_from_checkpoint(checkpoint)
        trainer.state = TrainerState.load_from_json(str(Path(checkpoint) / "trainer_state.json"))
        trainer._load_callback_state()
        print(f"{checkpoint} is the run's last step ({finished}): finishing it without training.")
    else:
        train_result = trainer.train(resume_from_checkpoint=checkpoint)
        trainer.log_metrics("train", train_result.metrics)
        trainer.save_metrics("train", train_result.metrics)
    metrics = trainer.evaluate()
    if problem := _nonfinite_result(trainer, metrics):
        monitor = trainer.stability
        good = monitor.diverge(training_args, trainer.state) if monitor is not None else None
        raise SystemExit(f"run_pretrain: error: the run diverged: {problem}. The last good checkpoint is "
                         f"{good or 'none'}. Lower --learning_rate or add warmup (--warmup_steps), and train again "
                         "in a new --output_dir.")
    trainer.save_model()
    trainer.log_metrics("eval", metrics)
    trainer.save_metrics("eval", metrics)
    dataset_info = {"name": data.source, "tokenizer": f"byte-level BPE, {len(data.tokenizer)} tokens"
                    if not data_args.tokenizer_name else data_args.tokenizer_name,
                    "sequence_length": data.block_size, "train_tokens": data.train_tokens,
                    "validation_tokens": len(data.validation) * data.block_size}
    # Explicit, so that a fresh model from --config_name is not taken for a fine-tune of that config's model.
    card = {"finetuned_from": model_args.model_name_or_path}
    written = write_run_artifacts(trainer, dataset_info=dataset_info, **card)
    if training_args.push_to_hub:
        trainer.push_to_hub(dataset_info=dataset_info, **card)
    if trainer.is_world_process_zero():
        out = Path(training_args.output_dir)
        loss = metrics["eval_loss"]
        print(f"\nFinished: eval loss {loss:.4f}, perplexity exp(loss) {math.exp(min(loss, 700.0)):.2f} "
              f"on {len(data.validation) * data.block_size} validation tokens")
        print(f"  checkpoint (safetensors + tokenizer): {out.resolve()}")
        for name, path in sorted(written.items()):
            print(f"  {name}: {Path(path).resolve()}")
    return 0
