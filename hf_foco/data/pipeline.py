"""From a data description to train/validation blocks and a tokenizer, with every costly step cached.

Two paths lead there. In memory: a second run with the same data, tokenizer and block size loads the packed
blocks from hf_foco's cache and starts at once; editing a data file changes the ``datasets`` fingerprint and so
every key downstream. Prepared: :func:`prepare_token_shards` (``hf-foco prepare-data``) tokenizes the same
sources once into token shards on disk (:mod:`hf_foco.data.prepared`), and ``--prepared_data DIR`` trains
from them by random access, for corpora larger than memory and runs too long to re-tokenize. Either way the
validation blocks depend only on the data, the tokenizer and the block size, never on the optimizer or the
seed, so runs of a comparison are evaluated on the same tokens.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from datasets import Dataset, IterableDataset, load_from_disk
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from .arguments import DataArguments, PrepareArguments
from .cache import cache_path, default_cache_dir, save_atomically
from .corpus import (
    BUILTIN_CORPORA,
    BUILTIN_TEXT_COLUMN,
    builtin_corpus,
    check_text_column,
    hub_corpus,
    local_corpus,
    text_batches,
)
from .packing import pack_dataset, pack_stream
from .prepared import (
    INDEX,
    TOKENIZER_DIR,
    PreparedTokens,
    describe,
    read_index,
    reuse_prepared,
    write_prepared,
)
from .tokenizer import cached_bpe, load_tokenizer, tokenizer_fingerprint

_PACKING_VERSION = "pack-v1"


@dataclass
class LMData:
    """Packed blocks ready for the Trainer, and where they came from (for logs and the model card)."""

    train: Dataset | IterableDataset | PreparedTokens
    validation: Dataset | torch.utils.data.Dataset
    tokenizer: PreTrainedTokenizerBase
    source: str
    block_size: int
    tokenizer_name: str

    @property
    def train_tokens(self) -> int | None:
        """Tokens in one pass over the training blocks (unknown for a stream)."""
        return None if isinstance(self.train, IterableDataset) else len(self.train) * self.block_size


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
    kind = args.builtin_corpus or "source"
    return builtin_corpus(args.validation_fraction, kind=kind), BUILTIN_TEXT_COLUMN, BUILTIN_CORPORA[kind]


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


def _tokenizer(args: DataArguments, raw: dict, column: str, cache_dir: str) -> tuple[PreTrainedTokenizerBase, str]:
    """The tokenizer ``args`` name, else a byte-level BPE trained on the training split (cached); and its name."""
    if args.tokenizer_name:
        return load_tokenizer(args.tokenizer_name), args.tokenizer_name
    limit = args.tokenizer_train_documents
    corpus = raw["train"] if limit is None else raw["train"].take(limit)
    tokenizer = cached_bpe(_texts(corpus, column), args.tokenizer_vocab_size, _fingerprint(corpus, args, limit),
                           cache_dir)
    return tokenizer, f"byte-level BPE, {len(tokenizer)} tokens"


def source_and_tokenizer(args: DataArguments):
    """(raw splits, text column, source description, tokenizer, tokenizer name): what both paths start from."""
    raw, column, source = load_raw(args)
    for split in ("train", "validation"):
        check_text_column(raw[split], column, split)
    tokenizer, name = _tokenizer(args, raw, column, args.data_cache_dir or default_cache_dir())
    return raw, column, source, tokenizer, name


def prepare_lm_data(args: DataArguments) -> LMData:
    """Raw data -> tokenizer (loaded, or trained and cached) -> packed train and validation blocks; or, with
    ``--prepared_data``, the blocks of a prepared directory."""
    if args.prepared_data:
        return _prepared_lm_data(args)
    cache_dir = args.data_cache_dir or default_cache_dir()
    raw, column, source, tokenizer, tokenizer_name = source_and_tokenizer(args)
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
                  tokenizer=tokenizer, source=source, block_size=args.block_size, tokenizer_name=tokenizer_name)


# What a prepared directory already fixes: training from one takes none of these.
_SOURCE_KEYS = ("dataset_name", "train_files", "validation_files", "streaming", "tokenizer_name")


def _prepared_lm_data(args: DataArguments) -> LMData:
    directory = args.prepared_data
    if given := [key for key in _SOURCE_KEYS if getattr(args, key)]:
        raise ValueError(f"--prepared_data {directory} names its own source and tokenizer: drop "
                         f"{', '.join('--' + key for key in given)} (they apply to `hf-foco prepare-data`).")
    index = read_index(directory)
    tokenizer = AutoTokenizer.from_pretrained(Path(directory) / TOKENIZER_DIR)
    if tokenizer_fingerprint(tokenizer) != index["tokenizer"]["fingerprint"]:
        raise ValueError(f"{Path(directory) / TOKENIZER_DIR} is not the tokenizer that wrote {directory}'s shards "
                         "(its fingerprint differs from index.json's): remove the directory and prepare it again.")
    train, validation = (PreparedTokens(directory, split, args.block_size, index) for split in ("train", "validation"))
    source = f"{index['source']['description']} (prepared in {directory})"
    for split, blocks in (("train", train), ("validation", validation)):
        if len(blocks) == 0:
            raise ValueError(f"The {split} split of {source} has fewer tokens than one block of {args.block_size}: "
                             "lower --block_size, or prepare more data.")
    if args.max_eval_blocks is not None:
        validation = torch.utils.data.Subset(validation, range(min(args.max_eval_blocks, len(validation))))
    return LMData(train=train, validation=validation, tokenizer=tokenizer, source=source, block_size=args.block_size,
                  tokenizer_name=index["tokenizer"]["name"])


def prepare_token_shards(args: DataArguments, prepare: PrepareArguments) -> tuple[dict, bool]:
    """``hf-foco prepare-data``: tokenize the source ``args`` describe into ``args.prepared_data``, or reuse
    the directory when it was prepared from the same source and tokenizer (checking every shard). Returns the
    index and whether it was reused."""
    if not args.prepared_data:
        raise ValueError("Name the directory to prepare with --prepared_data DIR.")
    if args.streaming:
        raise ValueError("prepare-data tokenizes a downloaded dataset in parallel: drop --streaming (the dataset is "
                         "downloaded once into the datasets cache).")
    raw, column, source, tokenizer, tokenizer_name = source_and_tokenizer(args)
    made_of = describe(tokenizer, tokenizer_name, source, {split: raw[split]._fingerprint for split in raw}, column)
    if (Path(args.prepared_data) / INDEX).exists():
        return reuse_prepared(args.prepared_data, made_of), True
    return write_prepared(args.prepared_data, raw, tokenizer, made_of, prepare.num_proc, prepare.shard_tokens), False
