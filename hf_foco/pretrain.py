"""The GPT-2 pretraining job: ``accelerate launch scripts/run_pretrain.py RECIPE.yaml [--key value ...]``
(or ``hf-foco train RECIPE.yaml ...``; both call :func:`main`).

A recipe is a YAML file of ``ModelArguments``, ``DataArguments`` and ``FocoTrainingArguments`` fields
(alignment-handbook style, read by :mod:`hf_foco.recipe`); command-line keys override it. :func:`main` reads
like transformers' and TRL's example scripts: parse the arguments, build the data and the model, plan what to
do with the output directory (:func:`hf_foco.trainer.checkpoints.plan_resume`: resume, finish, or refuse),
train, evaluate, save. Everything that can be wrong with the inputs (unknown keys, data, presets, block
size, a resume with other settings) fails before the first step, as one line. A finished run leaves a
safetensors checkpoint with its tokenizer, the eval loss and perplexity, the loss curve, the stability
summary and a model card in ``output_dir``. Rerunning a command whose run was killed continues it from the
latest complete checkpoint in ``output_dir``, or, when it was killed after its last step, writes what it
had not written yet, without training.

``python -m hf_foco.pretrain RECIPE.yaml ...`` is the job too. ``python -m hf_foco.pretrain --check`` reads a
JSON list of command lines (each ``[RECIPE.yaml, --key, value, ...]``) on stdin and writes, as a JSON list,
why the job would refuse each (or null): how a study (:mod:`hf_foco.compare`) vets its runs before starting
any, in a process of their own.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import sys
from pathlib import Path

import torch
from transformers import HfArgumentParser

from .allocator import tune_allocator
from .data import DataArguments, collate_blocks, prepare_lm_data
from .models import (
    ModelArguments,
    build_model,
    fit_to_tokenizer,
    model_config,
    positions,
    refuse_tokenizer_overrides,
    suppress_padded_ids,
)
from .recipe import describe_recipe_usage, parse_recipe_args
from .rundir import RESUME_RECORD, write_resume_record


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


def check_commands(argvs: list[list[str]]) -> list[str | None]:
    """Why the job would refuse each command line, from its arguments alone (None: accepted); argparse's own
    message for a malformed one."""
    problems = []
    for argv in argvs:
        errors = io.StringIO()
        try:
            with contextlib.redirect_stderr(errors):
                model_args, data_args, _ = parse_args(argv)
                model_config(model_args, data_args.block_size)
            problems.append(None)
        except (ValueError, OSError) as err:
            problems.append(str(err))
        except SystemExit:  # argparse has written its message
            problems.append(errors.getvalue().strip().splitlines()[-1])
    return problems


def build_data_and_model(model_args: ModelArguments, data_args: DataArguments, training_args):
    """Config, data, tokenizer and model -> (the data, a fresh or loaded model). The model's config is checked
    before the data is read."""
    config = model_config(model_args, data_args.block_size)
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
        return data, model
    refuse_tokenizer_overrides(model_args, tokenizer)
    fit_to_tokenizer(config, tokenizer, model_args.pad_vocab_size_to_multiple_of)
    if not data_args.tokenizer_name and positions(config):  # ours: record the context it serves
        tokenizer.model_max_length = positions(config)
    model = build_model(config, seed=training_args.seed)
    suppress_padded_ids(model, tokenizer)
    return data, model


def make_trainer(model, data, training_args, settings: dict, callbacks=None):
    """The ``FocoTrainer`` of the job: ``model`` on ``data``, its checkpoints recording ``settings``
    (:func:`hf_foco.trainer.checkpoints.settings_record`)."""
    from .trainer import FocoTrainer

    trainer = FocoTrainer(model=model, args=training_args, train_dataset=data.train, eval_dataset=data.validation,
                          data_collator=collate_blocks, processing_class=data.tokenizer, callbacks=callbacks)
    trainer.run_settings = settings
    return trainer


def build_trainer(model_args: ModelArguments, data_args: DataArguments, training_args, callbacks=None):
    """The job's ``FocoTrainer`` and data from its arguments, without a look at the output directory (for
    benchmarks and notebooks)."""
    from .trainer.checkpoints import settings_record

    data, model = build_data_and_model(model_args, data_args, training_args)
    return make_trainer(model, data, training_args, settings_record(model_args, data_args), callbacks), data


def _nonfinite_result(trainer, metrics: dict) -> str | None:
    """Why the finished run is not a result (non-finite weights or eval loss), or None."""
    if not math.isfinite(metrics.get("eval_loss", 0.0)):
        return f"the eval loss is {metrics['eval_loss']}"
    bad = [name for name, p in trainer.model.named_parameters() if not torch.isfinite(p).all()]
    return f"the final weights are not finite ({bad[0]}{' ...' if len(bad) > 1 else ''})" if bad else None


def _train(trainer, plan) -> None:
    """Train from ``plan``'s checkpoint, or take up a run that already reached its last step there."""
    if plan.finished_step is not None:
        trainer.load_finished(plan.checkpoint)
        print(f"Completing the run in {trainer.args.output_dir}: {plan.checkpoint} is its last step "
              f"({plan.finished_step}), but {', '.join(plan.missing)} {'is' if len(plan.missing) == 1 else 'are'} "
              "missing; writing them without training.")
        return
    result = trainer.train(resume_from_checkpoint=plan.checkpoint)
    trainer.log_metrics("train", result.metrics)
    trainer.save_metrics("train", result.metrics)


def _save(trainer, metrics: dict, data, data_args: DataArguments, model_args: ModelArguments) -> dict[str, Path]:
    """The final weights, eval results, resume record and the run's artifacts (record, loss curve, card), and
    the push."""
    from .trainer import write_run_artifacts

    trainer.save_model()
    trainer.log_metrics("eval", metrics)
    trainer.save_metrics("eval", metrics)
    dataset_info = {"name": data.source, "tokenizer": data.tokenizer_name,
                    "sequence_length": data.block_size, "train_tokens": data.train_tokens,
                    "validation_tokens": len(data.validation) * data.block_size}
    # Explicit, so that a fresh model from --config_name is not taken for a fine-tune of that config's model.
    card = {"finetuned_from": model_args.model_name_or_path}
    if data_args.dataset_name:  # a Hub dataset: its id and configuration are the card's metadata
        card.update(dataset_tags=data_args.dataset_name, dataset_args=data_args.dataset_config_name)
    written = write_run_artifacts(trainer, dataset_info=dataset_info, **card)
    if trainer.is_world_process_zero():
        out = Path(trainer.args.output_dir)
        write_resume_record(out, trainer.resume_record())  # what a rerun of the finished run compares
        written[RESUME_RECORD] = out / RESUME_RECORD
    if trainer.args.push_to_hub:
        trainer.push_to_hub(dataset_info=dataset_info, **card)
    return written


def main(argv: list[str] | None = None, callbacks=None) -> int:
    """Parse, build data and model, plan the resume, train, evaluate, save; ``callbacks`` are extra
    ``TrainerCallback`` objects.

    Bad input (recipe, data, model, arguments, a resume that would mix settings) exits with a one-line
    message before training starts; so do a divergence stop and a checkpoint that cannot be written.
    """
    from transformers.utils import logging

    from .trainer.checkpoints import (
        plan_resume,
        prepare_output_dir,
        resume_record,
        save_failure,
        settings_record,
    )
    from .trainer.stability import TrainingDivergedError
    from .trainer.trainer import CheckpointSaveError

    tune_allocator()  # before the first large tensor: the training step then reuses mapped memory
    try:  # bad input fails here, before any training, as one line instead of a traceback
        model_args, data_args, training_args = parse_args(argv)
        logging.set_verbosity(training_args.get_process_log_level())
        data, model = build_data_and_model(model_args, data_args, training_args)
        settings = settings_record(model_args, data_args)
        plan = plan_resume(training_args.output_dir, training_args, resume_record(training_args, settings))
        if plan.done:
            where = f" ({plan.checkpoint})" if plan.checkpoint else ""
            print(f"Nothing to do: the run in {training_args.output_dir} already finished at step "
                  f"{plan.finished_step}{where}. Raise --max_steps to train further, or pass a new --output_dir "
                  "to train again.")
            return 0
    except (ValueError, OSError) as err:  # OSError: a file that is missing or cannot be read
        raise SystemExit(f"run_pretrain: error: {err}") from err
    trainer = make_trainer(model, data, training_args, settings, callbacks)
    if trainer.is_world_process_zero():
        prepare_output_dir(plan, training_args.output_dir)
    try:
        _train(trainer, plan)
    except (TrainingDivergedError, CheckpointSaveError) as err:
        raise SystemExit(f"run_pretrain: error: {err}") from None
    metrics = trainer.evaluate()
    if problem := _nonfinite_result(trainer, metrics):
        monitor = trainer.stability
        good = monitor.diverge(training_args, trainer.state) if monitor is not None else None
        raise SystemExit(f"run_pretrain: error: the run diverged: {problem}. The last good checkpoint is "
                         f"{good or 'none'}. Lower --learning_rate or add warmup (--warmup_steps), and train again "
                         "in a new --output_dir.")
    try:
        written = _save(trainer, metrics, data, data_args, model_args)
    except OSError as err:
        raise SystemExit("run_pretrain: error: " + save_failure(training_args.output_dir, trainer.state.global_step,
                                                                 err, what="the final model and results")) from None
    if trainer.is_world_process_zero():
        out = Path(training_args.output_dir)
        loss = metrics["eval_loss"]
        print(f"\nFinished: eval loss {loss:.4f}, perplexity exp(loss) {math.exp(min(loss, 700.0)):.2f} "
              f"on {len(data.validation) * data.block_size} validation tokens")
        print(f"  checkpoint (safetensors + tokenizer): {out.resolve()}")
        for name, path in sorted(written.items()):
            print(f"  {name}: {Path(path).resolve()}")
    return 0


if __name__ == "__main__":
    if sys.argv[1:] == ["--check"]:
        json.dump(check_commands(json.load(sys.stdin)), sys.stdout)
    else:
        sys.exit(main())
