#!/usr/bin/env python
"""A stock Hugging Face Trainer script for sequence classification, written the way transformers'
examples/pytorch/text-classification/run_glue.py is, shortened. It knows nothing of hf_foco: the tests (and the
README) run it unmodified, as `python stock_glue.py ...` and as `hf-foco run stock_glue.py ...`.

    python tests/scripts/stock_glue.py --do_train --do_eval --output_dir OUT --optim adamw_torch

By default it trains a 2-layer BERT from scratch on the word-level tokenizer in data/tokenizer and the labelled
sentences in data/classification/ (JSON lines: "sentence", "label"; a sentence is "animal" when it names one), so
it runs offline in seconds. Accuracy is computed here with numpy where run_glue.py loads it with `evaluate`.
"""

import logging
import os
import sys
from dataclasses import dataclass, field

import datasets
import numpy as np
import transformers
from datasets import load_dataset
from transformers import (
    CONFIG_MAPPING,
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    EvalPrediction,
    HfArgumentParser,
    Trainer,
    TrainingArguments,
    default_data_collator,
    set_seed,
)

logger = logging.getLogger(__name__)
DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")


@dataclass
class ModelArguments:
    """Which model, config and tokenizer to fine-tune (or train from scratch)."""

    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Checkpoint to start from. Leave unset to train a model from scratch."})
    model_type: str | None = field(default="bert", metadata={"help": "Model type to build from scratch."})
    config_name: str | None = field(default=None, metadata={"help": "Config name or path, if not the model's."})
    config_overrides: str | None = field(
        default="hidden_size=32,num_hidden_layers=2,num_attention_heads=2,intermediate_size=64,vocab_size=32,"
                "max_position_embeddings=16",
        metadata={"help": "Config settings for a model trained from scratch."})
    tokenizer_name: str | None = field(
        default=os.path.join(DATA, "tokenizer"), metadata={"help": "Tokenizer name or path, if not the model's."})


@dataclass
class DataTrainingArguments:
    """Which labelled text to train and evaluate on."""

    task_name: str | None = field(default=None, metadata={"help": "A GLUE task name, for the model card."})
    train_file: str | None = field(default=os.path.join(DATA, "classification", "train.jsonl"),
                                   metadata={"help": "A csv or JSON-lines file of training sentences and labels."})
    validation_file: str | None = field(default=os.path.join(DATA, "classification", "valid.jsonl"),
                                        metadata={"help": "A csv or JSON-lines file to evaluate on."})
    max_seq_length: int = field(default=16, metadata={"help": "Tokens per sequence after truncation and padding."})
    pad_to_max_length: bool = field(default=True, metadata={"help": "Pad every sequence to max_seq_length."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Truncate the training examples."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Truncate the evaluation examples."})


def main():
    parser = HfArgumentParser((ModelArguments, DataTrainingArguments, TrainingArguments))
    if len(sys.argv) == 2 and sys.argv[1].endswith(".json"):
        model_args, data_args, training_args = parser.parse_json_file(json_file=os.path.abspath(sys.argv[1]))
    else:
        model_args, data_args, training_args = parser.parse_args_into_dataclasses()

    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
                        handlers=[logging.StreamHandler(sys.stdout)])
    log_level = training_args.get_process_log_level()
    logger.setLevel(log_level)
    datasets.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.set_verbosity(log_level)
    set_seed(training_args.seed)

    data_files = {"train": data_args.train_file, "validation": data_args.validation_file}
    extension = data_args.train_file.split(".")[-1]
    raw_datasets = load_dataset("csv" if extension == "csv" else "json", data_files=data_files)
    label_list = sorted(raw_datasets["train"].unique("label"))
    num_labels = len(label_list)

    if model_args.config_name or model_args.model_name_or_path:
        config = AutoConfig.from_pretrained(model_args.config_name or model_args.model_name_or_path,
                                            num_labels=num_labels, finetuning_task=data_args.task_name)
    else:
        config = CONFIG_MAPPING[model_args.model_type](num_labels=num_labels, finetuning_task=data_args.task_name)
        if model_args.config_overrides is not None:
            config.update_from_string(model_args.config_overrides)
    tokenizer = AutoTokenizer.from_pretrained(model_args.tokenizer_name or model_args.model_name_or_path)
    config.pad_token_id = tokenizer.pad_token_id
    if model_args.model_name_or_path:
        model = AutoModelForSequenceClassification.from_pretrained(model_args.model_name_or_path, config=config)
    else:
        model = AutoModelForSequenceClassification.from_config(config)

    label_to_id = {v: i for i, v in enumerate(label_list)}
    model.config.label2id = label_to_id
    model.config.id2label = {i: label for label, i in label_to_id.items()}
    padding = "max_length" if data_args.pad_to_max_length else False

    def preprocess_function(examples):
        result = tokenizer(examples["sentence"], padding=padding, max_length=data_args.max_seq_length,
                           truncation=True)
        result["label"] = [label_to_id[label] for label in examples["label"]]
        return result

    with training_args.main_process_first(desc="dataset map pre-processing"):
        raw_datasets = raw_datasets.map(preprocess_function, batched=True, remove_columns=["sentence"])
    train_dataset = raw_datasets["train"]
    if data_args.max_train_samples is not None:
        train_dataset = train_dataset.select(range(min(len(train_dataset), data_args.max_train_samples)))
    eval_dataset = raw_datasets["validation"]
    if data_args.max_eval_samples is not None:
        eval_dataset = eval_dataset.select(range(min(len(eval_dataset), data_args.max_eval_samples)))

    def compute_metrics(p: EvalPrediction):
        preds = p.predictions[0] if isinstance(p.predictions, tuple) else p.predictions
        preds = np.argmax(preds, axis=1)
        return {"accuracy": float((preds == p.label_ids).mean())}

    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset if training_args.do_train else None,
        eval_dataset=eval_dataset if training_args.do_eval else None,
        compute_metrics=compute_metrics,
        processing_class=tokenizer,
        data_collator=default_data_collator,
    )

    if training_args.do_train:
        train_result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
        metrics = train_result.metrics
        metrics["train_samples"] = len(train_dataset)
        trainer.save_model()
        trainer.log_metrics("train", metrics)
        trainer.save_metrics("train", metrics)
        trainer.save_state()

    if training_args.do_eval:
        metrics = trainer.evaluate(eval_dataset=eval_dataset)
        metrics["eval_samples"] = len(eval_dataset)
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)

    kwargs = {"finetuned_from": model_args.model_name_or_path, "tasks": "text-classification"}
    if data_args.task_name is not None:
        kwargs["language"] = "en"
        kwargs["dataset_tags"] = "glue"
        kwargs["dataset_args"] = data_args.task_name
        kwargs["dataset"] = f"GLUE {data_args.task_name.upper()}"
    if training_args.push_to_hub:
        trainer.push_to_hub(**kwargs)
    else:
        trainer.create_model_card(**kwargs)


if __name__ == "__main__":
    main()
