#!/usr/bin/env python
"""A stock Hugging Face Trainer script for token classification, written the way transformers'
examples/pytorch/token-classification/run_ner.py is, shortened. It knows nothing of hf_foco: the tests (and the
README) run it unmodified, as `python stock_ner.py ...` and as `hf-foco run stock_ner.py ...`.

    python tests/scripts/stock_ner.py --do_train --do_eval --output_dir OUT --optim adamw_torch

By default it trains a 2-layer BERT from scratch on the word-level tokenizer in data/tokenizer and the tagged
sentences in data/ner/ (JSON lines: "tokens", "ner_tags"; B-ANIMAL, B-OBJECT or O per word), so it runs offline
in seconds. Token-level precision, recall, F1 and accuracy are computed here with numpy where run_ner.py loads
seqeval with `evaluate`.
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
    AutoModelForTokenClassification,
    AutoTokenizer,
    DataCollatorForTokenClassification,
    HfArgumentParser,
    Trainer,
    TrainingArguments,
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
    """Which tagged text to train and evaluate on."""

    train_file: str | None = field(default=os.path.join(DATA, "ner", "train.jsonl"),
                                   metadata={"help": "A JSON-lines file of words and their tags."})
    validation_file: str | None = field(default=os.path.join(DATA, "ner", "valid.jsonl"),
                                        metadata={"help": "A JSON-lines file to evaluate on."})
    text_column_name: str = field(default="tokens", metadata={"help": "The column of words."})
    label_column_name: str = field(default="ner_tags", metadata={"help": "The column of tags."})
    max_seq_length: int | None = field(default=16, metadata={"help": "Tokens per sequence after truncation."})
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
    raw_datasets = load_dataset("json", data_files=data_files)
    text_column_name, label_column_name = data_args.text_column_name, data_args.label_column_name
    label_list = sorted({tag for tags in raw_datasets["train"][label_column_name] for tag in tags})
    label_to_id = {label: i for i, label in enumerate(label_list)}
    num_labels = len(label_list)

    if model_args.config_name or model_args.model_name_or_path:
        config = AutoConfig.from_pretrained(model_args.config_name or model_args.model_name_or_path,
                                            num_labels=num_labels, finetuning_task="ner")
    else:
        config = CONFIG_MAPPING[model_args.model_type](num_labels=num_labels, finetuning_task="ner")
        if model_args.config_overrides is not None:
            config.update_from_string(model_args.config_overrides)
    tokenizer = AutoTokenizer.from_pretrained(model_args.tokenizer_name or model_args.model_name_or_path)
    config.pad_token_id = tokenizer.pad_token_id
    if model_args.model_name_or_path:
        model = AutoModelForTokenClassification.from_pretrained(model_args.model_name_or_path, config=config)
    else:
        model = AutoModelForTokenClassification.from_config(config)
    model.config.label2id = label_to_id
    model.config.id2label = dict(enumerate(label_list))

    def tokenize_and_align_labels(examples):
        tokenized_inputs = tokenizer(examples[text_column_name], padding=False, truncation=True,
                                     max_length=data_args.max_seq_length, is_split_into_words=True)
        labels = []
        for i, label in enumerate(examples[label_column_name]):
            word_ids = tokenized_inputs.word_ids(batch_index=i)
            previous_word_idx = None
            label_ids = []
            for word_idx in word_ids:
                if word_idx is None or word_idx == previous_word_idx:
                    label_ids.append(-100)  # special tokens and the later pieces of a word carry no label
                else:
                    label_ids.append(label_to_id[label[word_idx]])
                previous_word_idx = word_idx
            labels.append(label_ids)
        tokenized_inputs["labels"] = labels
        return tokenized_inputs

    with training_args.main_process_first(desc="dataset map pre-processing"):
        raw_datasets = raw_datasets.map(tokenize_and_align_labels, batched=True,
                                        remove_columns=raw_datasets["train"].column_names)
    train_dataset = raw_datasets["train"]
    if data_args.max_train_samples is not None:
        train_dataset = train_dataset.select(range(min(len(train_dataset), data_args.max_train_samples)))
    eval_dataset = raw_datasets["validation"]
    if data_args.max_eval_samples is not None:
        eval_dataset = eval_dataset.select(range(min(len(eval_dataset), data_args.max_eval_samples)))

    data_collator = DataCollatorForTokenClassification(tokenizer, pad_to_multiple_of=8 if training_args.fp16 else None)

    def compute_metrics(p):
        predictions, labels = p
        predictions = np.argmax(predictions, axis=2)
        keep = labels != -100
        predicted, true = predictions[keep], labels[keep]
        outside = label_to_id.get("O", -1)
        hits = ((predicted == true) & (true != outside)).sum()
        precision = hits / max((predicted != outside).sum(), 1)
        recall = hits / max((true != outside).sum(), 1)
        return {"precision": float(precision), "recall": float(recall),
                "f1": float(2 * precision * recall / max(precision + recall, 1e-12)),
                "accuracy": float((predicted == true).mean())}

    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset if training_args.do_train else None,
        eval_dataset=eval_dataset if training_args.do_eval else None,
        processing_class=tokenizer,
        data_collator=data_collator,
        compute_metrics=compute_metrics,
    )

    if training_args.do_train:
        train_result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
        metrics = train_result.metrics
        trainer.save_model()
        metrics["train_samples"] = len(train_dataset)
        trainer.log_metrics("train", metrics)
        trainer.save_metrics("train", metrics)
        trainer.save_state()

    if training_args.do_eval:
        metrics = trainer.evaluate()
        metrics["eval_samples"] = len(eval_dataset)
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)

    kwargs = {"finetuned_from": model_args.model_name_or_path, "tasks": "token-classification"}
    if training_args.push_to_hub:
        trainer.push_to_hub(**kwargs)
    else:
        trainer.create_model_card(**kwargs)


if __name__ == "__main__":
    main()
