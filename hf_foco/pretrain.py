"""GPT-2 pretraining from a recipe: ``accelerate launch scripts/run_pretrain.py RECIPE.yaml [--key value ...]``.

A recipe is a YAML file of ``ModelArguments``, ``DataArguments`` and ``FocoTrainingArguments`` fields
(alignment-handbook style); command-line keys override it. Everything that can be wrong with the inputs
(unknown keys, data, presets, block size) fails before the first step, and a finished run leaves a
safetensors checkpoint with its tokenizer, the eval loss and perplexity, the loss curve, the stability
summary and a model card in ``output_dir``. Rerunning a command whose run was killed continues it from the
latest complete checkpoint in ``output_dir`` (see :mod:`hf_foco.trainer.checkpoints`).
"""

from __future__ import annotations

import difflib
import math
import os
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch
import yaml
from transformers import HfArgumentParser

from .data import collate_blocks, prepare_lm_data
from .models import PRESETS, build_config, build_model, preset_config

RECIPE_SUFFIXES = (".yaml", ".yml")


@dataclass
class ModelArguments:
    """Which model to pretrain."""

    model: str = field(default="gpt2-nano", metadata={
        "help": f"A GPT-2 preset: {', '.join(PRESETS)}. Ignored when --config_name or --model_name_or_path is set."})
    config_name: str | None = field(default=None, metadata={
        "help": "A config (local directory, or a Hub name in the local cache) to initialise a fresh model from."})
    model_name_or_path: str | None = field(default=None, metadata={
        "help": "A checkpoint to continue pretraining from (offline: a local directory or cached name)."})
    config_overrides: str | None = field(default=None, metadata={
        "help": "Config fields to override, e.g. 'n_layer=2,n_embd=64' (fresh models only)."})


@dataclass
class DataArguments:
    """Where the text comes from, how it is tokenized and how it is cut into blocks."""

    dataset_name: str | None = field(default=None, metadata={
        "help": "A Hub dataset (needs network, or the dataset in the local cache). Unset, with no "
                "--train_files: the built-in corpus (the Python standard library)."})
    dataset_config_name: str | None = field(default=None, metadata={"help": "The Hub dataset's configuration."})
    dataset_split: str = field(default="train", metadata={"help": "The Hub split to train on."})
    validation_split: str | None = field(default=None, metadata={
        "help": "A Hub split to evaluate on; unset: hold out --validation_fraction of the documents."})
    streaming: bool = field(default=False, metadata={
        "help": "Stream the Hub dataset instead of downloading it (needs --max_steps)."})
    streaming_validation_documents: int = field(default=2000, metadata={
        "help": "With --streaming and no --validation_split: evaluate on this many documents of the stream's first "
                "shard (training reads the other shards)."})
    train_files: list[str] | None = field(default=None, metadata={
        "help": "Local text (.txt/.text/.py/.md) or JSON-lines (.json/.jsonl) files or globs to train on."})
    validation_files: list[str] | None = field(default=None, metadata={
        "help": "Local files to evaluate on; unset: hold out --validation_fraction of the training documents."})
    sample_by: str = field(default="line", metadata={
        "help": "What one document is in local text files.", "choices": ("line", "paragraph", "document")})
    text_column: str = field(default="text", metadata={"help": "The column holding the text."})
    validation_fraction: float = field(default=0.05, metadata={
        "help": "Share of documents held out for validation (chosen by a hash of the file path or row index)."})
    max_eval_blocks: int | None = field(default=None, metadata={
        "help": "Evaluate on the first N validation blocks only (the same N blocks in every run)."})
    block_size: int = field(default=256, metadata={"help": "Tokens per training sequence; at most the model's "
                                                           "n_positions."})
    tokenizer_name: str | None = field(default=None, metadata={
        "help": "An existing tokenizer (local directory or cached Hub name); unset: train a byte-level BPE."})
    tokenizer_vocab_size: int = field(default=4096, metadata={
        "help": "Vocabulary size of the trained byte-level BPE."})
    tokenizer_train_documents: int | None = field(default=None, metadata={
        "help": "Train the BPE on the first N training documents (required when streaming); unset: all."})
    data_cache_dir: str | None = field(default=None, metadata={
        "help": "Cache for trained tokenizers and packed blocks; unset: $HF_FOCO_CACHE or ~/.cache/hf_foco."})

    def __post_init__(self):
        if self.block_size < 2:
            raise ValueError(f"--block_size {self.block_size}: it must be at least 2 (inputs and shifted labels).")
        if not 0.0 < self.validation_fraction < 1.0 and not (self.validation_files or self.validation_split):
            raise ValueError(f"--validation_fraction {self.validation_fraction}: it must lie in (0, 1).")
        if self.dataset_name and self.train_files:
            raise ValueError("Pass either --dataset_name or --train_files, not both.")
        if self.streaming and not self.dataset_name:
            raise ValueError("--streaming applies to Hub datasets: set --dataset_name.")
        if self.streaming and not self.tokenizer_name and self.tokenizer_train_documents is None:
            raise ValueError("Training a tokenizer on a stream needs --tokenizer_train_documents N (or pass "
                             "--tokenizer_name).")


def _parser():
    from .trainer import FocoTrainingArguments

    return HfArgumentParser((ModelArguments, DataArguments, FocoTrainingArguments))


def load_recipe(path: str | Path, parser: HfArgumentParser) -> dict:
    """The recipe's keys; an unknown key (a typo would otherwise be silently ignored) is an error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Recipe {str(path)!r} does not exist (see recipes/ for examples).")
    recipe = yaml.safe_load(path.read_text()) or {}
    if not isinstance(recipe, dict):
        raise ValueError(f"Recipe {str(path)!r} must be a mapping of argument names to values.")
    known = {f.name for dtype in parser.dataclass_types for f in fields(dtype) if f.init}
    unknown = sorted(set(recipe) - known)
    if unknown:
        hints = [f"{k!r} (did you mean {m[0]!r}?)" if (m := difflib.get_close_matches(k, known, 1)) else repr(k)
                 for k in unknown]
        raise ValueError(f"Unknown key(s) in recipe {str(path)!r}: {', '.join(hints)}. Run "
                         "`scripts/run_pretrain.py --help` for the valid keys.")
    return recipe


def parse_args(argv: list[str] | None = None):
    """``[RECIPE.yaml] [--key value ...]`` -> (ModelArguments, DataArguments, FocoTrainingArguments).

    The recipe's values become the parser's defaults, so any command-line key overrides them and argparse
    still converts and checks every value. Launched as several processes on a machine without GPU,
    ``use_cpu`` defaults to true (gloo DDP).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.accelerator.is_available():
        # A multi-process launch on a machine without accelerator (recipes/accelerate_configs/cpu_ddp.yaml):
        # only CPU DDP can work, and without use_cpu each rank would run alone.
        parser.set_defaults(use_cpu=True)
    if argv and argv[0].endswith(RECIPE_SUFFIXES):
        parser.set_defaults(**load_recipe(argv.pop(0), parser))
        # Keys the recipe sets are no longer required on the command line (e.g. output_dir).
        for action in parser._actions:
            if action.dest in parser._defaults:
                action.required = False
    return parser.parse_args_into_dataclasses(args=argv)


def _parse_overrides(text: str) -> dict:
    overrides = {}
    for piece in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = piece.partition("=")
        if not sep:
            raise ValueError(f"--config_overrides: {piece!r} is not key=value (e.g. 'n_layer=2,n_embd=64').")
        overrides[key.strip()] = yaml.safe_load(value)
    return overrides


def _positions(config) -> int | None:
    return getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)


def model_config(model_args: ModelArguments, block_size: int):
    """The config to build, checked against the block size before any data is touched."""
    overrides = _parse_overrides(model_args.config_overrides or "")
    if model_args.model_name_or_path and overrides:
        raise ValueError("--config_overrides applies to fresh models only, not to --model_name_or_path.")
    name = model_args.model_name_or_path or model_args.config_name
    config = build_config(name, **overrides) if name else preset_config(model_args.model, **overrides)
    positions = _positions(config)
    if positions is not None and block_size > positions:
        raise ValueError(f"--block_size {block_size} exceeds the model's {positions} positions: lower --block_size "
                         f"or raise them (e.g. --config_overrides n_positions={block_size}).")
    return config


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
        if not data_args.tokenizer_name and _positions(config):  # ours: record the context it serves
            tokenizer.model_max_length = _positions(config)
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
    written = write_run_artifacts(trainer, dataset_info=dataset_info)
    if training_args.push_to_hub:
        trainer.push_to_hub(dataset_info=dataset_info)
    if trainer.is_world_process_zero():
        out = Path(training_args.output_dir)
        loss = metrics["eval_loss"]
        print(f"\nFinished: eval loss {loss:.4f}, perplexity exp(loss) {math.exp(min(loss, 700.0)):.2f} "
              f"on {len(data.validation) * data.block_size} validation tokens")
        print(f"  checkpoint (safetensors + tokenizer): {out.resolve()}")
        for name, path in sorted(written.items()):
            print(f"  {name}: {Path(path).resolve()}")
    return 0


def train_args(parser) -> None:
    """``hf-foco train``: the recipe; every other ``--key value`` goes to :func:`main`."""
    parser.add_argument("recipe", nargs="?", help="a recipe YAML (e.g. recipes/gpt2-nano/foco.yaml); "
                                                  "--key value pairs after it override its keys")
    parser.set_defaults(accepts_extra=True)


def train_run(args) -> int:
    return main(([args.recipe] if args.recipe else []) + list(args.extra))


if __name__ == "__main__":
    sys.exit(main())
