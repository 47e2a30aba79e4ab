"""From a data description to train/validation blocks and a tokenizer, with every costly step cached.

A second run with the same data, tokenizer and block size loads the packed blocks from disk and starts at
once; editing a data file changes the ``datasets`` fingerprint and so every key downstream. The validation
blocks depend only on the data, the tokenizer and the block size, never on the optimizer or the seed, so
runs of a comparison are evaluated on the same tokens.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from datasets import Dataset, IterableDataset, load_from_disk
from transformers import PreTrainedTokenizerBase

from .arguments import DataArguments
from .cache import cache_path, default_cache_dir, save_atomically
from .corpus import (
    BUILTIN_TEXT_COLUMN,
    builtin_corpus,
    check_text_column,
    hub_corpus,
    local_corpus,
    text_batches,
)
from .packing import pack_dataset, pack_stream
from .tokenizer import cached_bpe, load_tokenizer, tokenizer_fingerprint

_PACKING_VERSION = "pack-v1"


@dataclass
class LMData:
    """Packed blocks ready for the Trainer, and where they came from (for logs and the model card)."""

    train: Dataset | IterableDataset
    validation: Dataset
    tokenizer: PreTrainedTokenizerBase
    source: str
    block_size: int

    @property
    def train_tokens(self) -> int | None:
        """Tokens in one pass over the training blocks (unknown for a stream)."""
        return len(self.train) * self.block_size if isinstance(self.train, Dataset) else None


def load_raw(args: DataArguments) -> tuple[dict, str, str]:
    """(``{"train", "validation"}`` raw datasets, text column, a description of the source)."""
    if args.dataset_name:
        raw = hub_corpus(args.dataset_name, args.dataset_config_name, args.dataset_split, args.validation_split,
                         args.validation_fraction, args.streaming, args.streaming_validation_documents,
                         args.text_column)
        source = f"{args.dataset_name}" + (f"/{args.dataset_config_name}" if args.dataset_config_name else "")
        return raw, args.text_column, source
    if args.train_files:
        raw = local_corpus(args.train_files, args.validation_files, args.validation_fraction, args.text_column,
                           args.sample_by)
        return raw, args.text_column, f"local files {', '.join(args.train_files)}"
    return builtin_corpus(args.validation_fraction), BUILTIN_TEXT_COLUMN, "the Python standard library (built-in)"


def _texts(dataset: Dataset | IterableDataset, column: str) -> Iterator[str]:
    for texts in text_batches(dataset, column):
        yield from filter(None, texts)


def _fingerprint(dataset: Dataset | IterableDataset, args: DataArguments, limit: int | None) -> str:
    """The dataset's own content fingerprint; a stream has none, so its description stands in."""
    if isinstance(dataset, Dataset):
        return dataset._fingerprint
    parts = (args.dataset_name, args.dataset_config_name, args.dataset_split, limit)
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:16]


def _packed(dataset: Dataset, tokenizer, column: str, block_size: int, cache_dir: str, split: str,
            source: str) -> Dataset:
    path = cache_path(cache_dir, "packed", _PACKING_VERSION, dataset._fingerprint, tokenizer_fingerprint(tokenizer),
                      column, block_size)
    if not Path(path).exists():
        packed = pack_dataset(dataset, tokenizer, column, block_size, desc=f"Packing {split}")
        _require_one_block(packed, split, block_size, source)
        save_atomically(packed, path)
    return load_from_disk(path)


def _require_one_block(dataset: Dataset, split: str, block_size: int, source: str) -> None:
    if len(dataset) == 0:
        raise ValueError(f"The {split} split of {source} is empty or has fewer tokens than one block of "
                         f"{block_size}: add data, lower --block_size, or (for validation) raise "
                         "--validation_fraction.")


def prepare_lm_data(args: DataArguments) -> LMData:
    """Raw data -> tokenizer (loaded, or trained and cached) -> packed train and validation blocks."""
    cache_dir = args.data_cache_dir or default_cache_dir()
    raw, column, source = load_raw(args)
    for split in ("train", "validation"):
        check_text_column(raw[split], column, split)
    if args.tokenizer_name:
        tokenizer = load_tokenizer(args.tokenizer_name)
    else:
        limit = args.tokenizer_train_documents
        corpus = raw["train"] if limit is None else raw["train"].take(limit)
        tokenizer = cached_bpe(_texts(corpus, column), args.tokenizer_vocab_size, _fingerprint(corpus, args, limit),
                               cache_dir)
    validation = raw["validation"]
    if isinstance(validation, IterableDataset):  # a held-out stream is small: pack it in memory each run
        validation = pack_dataset(validation, tokenizer, column, args.block_size, desc="Packing validation")
        _require_one_block(validation, "validation", args.block_size, source)
    else:
        validation = _packed(validation, tokenizer, column, args.block_size, cache_dir, "validation", source)
    if args.max_eval_blocks is not None:
        validation = validation.select(range(min(args.max_eval_blocks, len(validation))))
    if isinstance(raw["train"], IterableDataset):
        train = pack_stream(raw["train"], tokenizer, column, args.block_size)
    else:
        train = _packed(raw["train"], tokenizer, column, args.block_size, cache_dir, "train", source)
    return LMData(train=train.with_format("numpy"), validation=validation.with_format("numpy"),
                  tokenizer=tokenizer, source=source, block_size=args.block_size)
