#!/usr/bin/env python
"""A stock TRL supervised fine-tuning script, written the way TRL's trl/scripts/sft.py is, shortened. It knows
nothing of hf_foco: the tests (and the README) run it unmodified, as `python stock_sft.py ...` and as
`hf-foco run stock_sft.py ...`.

    python tests/scripts/stock_sft.py --output_dir OUT --max_steps 6 --bf16 false

By default it trains a 2-layer GPT-2 built from a config on the word-level tokenizer and the text files in data/
next to it (plain text: TRL's language-modelling dataset type), so it runs offline in seconds.
"""

import os
from dataclasses import dataclass, field

from datasets import load_dataset
from transformers import CONFIG_MAPPING, AutoModelForCausalLM, AutoTokenizer
from trl import SFTConfig, SFTTrainer, TrlParser

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")


@dataclass
class ScriptArguments:
    """Which text to train and evaluate on."""

    train_file: str = field(default=os.path.join(DATA, "train.txt"), metadata={"help": "Training text file."})
    validation_file: str = field(default=os.path.join(DATA, "valid.txt"), metadata={"help": "Evaluation text file."})


@dataclass
class ModelArguments:
    """Which model to fine-tune, or build from a config."""

    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Checkpoint to start from. Leave unset to build a model from a config."})
    model_type: str = field(default="gpt2", metadata={"help": "Model type to build from a config."})
    config_overrides: str = field(default="n_layer=2,n_embd=32,n_head=2,n_positions=16,vocab_size=32",
                                  metadata={"help": "Config settings for a model built from a config."})
    tokenizer_name: str = field(default=os.path.join(DATA, "tokenizer"), metadata={"help": "Tokenizer path."})


def main(script_args, training_args, model_args):
    dataset = load_dataset("text", data_files={"train": script_args.train_file, "test": script_args.validation_file})
    tokenizer = AutoTokenizer.from_pretrained(model_args.tokenizer_name)
    if model_args.model_name_or_path:
        model = AutoModelForCausalLM.from_pretrained(model_args.model_name_or_path)
    else:
        config = CONFIG_MAPPING[model_args.model_type]()
        config.update_from_string(model_args.config_overrides)
        model = AutoModelForCausalLM.from_config(config)

    trainer = SFTTrainer(
        model=model,
        args=training_args,
        train_dataset=dataset["train"],
        eval_dataset=dataset["test"] if training_args.eval_strategy != "no" else None,
        processing_class=tokenizer,
    )
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model(training_args.output_dir)
    if training_args.eval_strategy != "no":
        metrics = trainer.evaluate()
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
    if training_args.push_to_hub:
        trainer.push_to_hub()


if __name__ == "__main__":
    parser = TrlParser((ScriptArguments, SFTConfig, ModelArguments))
    script_args, training_args, model_args = parser.parse_args_and_config()
    main(script_args, training_args, model_args)
