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

    Launched as several processes on a machine without GPU, ``use_cpu`` defaults to true (gloo DDP).
    ``prog`` names the command in ``--help`` (default: the script's file name).
    """
    parser = _parser(prog)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.accelerator.is_available():
        # A multi-process launch on a machine without accelerator (recipes/accelerate_configs/cpu_ddp.yaml):
        # only CPU DDP can work, and without use_cpu each rank would run alone.
        parser.set_defaults(use_cpu=True)
    return parse_recipe_args(parser, sys.argv[1:] if argv is None else argv)


def check_output_dir(output_dir: str) -> None:
    """Fail now, not at the first save after hours of training, when ``output_dir`` cannot be written."""
    path = Path(output_dir).absolute()
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        problem = f"{existing} is a file, not a directory"
    elif not os.access(existing, os.W_OK | os.X_OK):
        problem = f"{existing} is not writable"
    else:
        return
    raise ValueError(f"--output_dir {output_dir} cannot hold the run's checkpoints: {problem}. Pass a --output_dir "
                     "you can write to.")


def build_trainer(model_args: ModelArguments, data_args: DataArguments, training_args, callbacks=None):
    """Config, data, tokenizer and model -> a ready ``FocoTrainer`` (and the data description).

    The output directory and an explicitly named checkpoint to resume from are checked first, so a run
    that could not save, or could not resume, fails before the data is even read.
    """
    from .trainer import FocoTrainer
    from .trainer.checkpoints import LATEST, checkpoint_corruption

    config = model_config(model_args, data_args.block_size)
    check_output_dir(training_args.output_dir)
    resume = training_args.resume_from_checkpoint
    if resume is not None and str(resume).lower() not in LATEST and (problem := checkpoint_corruption(resume)):
        raise ValueError(f"--resume_from_checkpoint {resume} cannot be resumed from: {problem}. Resume from another, "
                         "intact checkpoint-N directory of the run instead.")
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


def main(argv: list[str] | None = None, callbacks=None) -> int:
    """Parse, prepare, train, evaluate, save; ``callbacks`` are extra ``TrainerCallback`` objects.

    Bad input (recipe, data, model, arguments) exits with a one-line message before training starts.
    """
    from transformers.utils import logging

    from .trainer import write_run_artifacts
    from .trainer.checkpoints import checkpoint_to_resume

    tune_allocator()  # before the first large tensor: the training step then reuses mapped memory
    try:  # bad input fails here, before any training, as one line instead of a traceback
        model_args, data_args, training_args = parse_args(argv)
        logging.set_verbosity(training_args.get_process_log_level())
        # A rerun of a killed command continues from its latest complete checkpoint (never a partial one).
        checkpoint = checkpoint_to_resume(training_args.output_dir, training_args.resume_from_checkpoint,
                                          training_args.world_size)
        trainer, data = build_trainer(model_args, data_args, training_args, callbacks)
    except (ValueError, FileNotFoundError) as err:
        raise SystemExit(f"run_pretrain: error: {err}") from err
    train_result = trainer.train(resume_from_checkpoint=checkpoint)
    trainer.save_model()
    trainer.log_metrics("train", train_result.metrics)
    trainer.save_metrics("train", train_result.metrics)
    metrics = trainer.evaluate()
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
