"""``DataArguments``: what the data layer needs to know (source, tokenizer, block size, cache), and
``PrepareArguments``, how ``hf-foco prepare-data`` writes token shards; ``HfArgumentParser`` fields, so recipes
and command lines set them."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from .corpus import BUILTIN_CORPORA


@dataclass
class DataArguments:
    """Where the text comes from, how it is tokenized and how it is cut into blocks."""

    prepared_data: str | None = field(default=None, metadata={
        "help": "A directory of token shards written by `hf-foco prepare-data` to train on (it names its own "
                "source and tokenizer); for prepare-data, the directory to write."})
    dataset_name: str | None = field(default=None, metadata={
        "help": "A Hub dataset (needs network, or the dataset in the local cache). Unset, with no "
                "--train_files: the built-in corpus (see --builtin_corpus)."})
    builtin_corpus: str | None = field(default=None, metadata={
        "help": "The built-in corpus used when neither --dataset_name nor --train_files is set: source (the "
                "Python standard library's code; also when unset) or prose (its docstrings and pydoc topics, in "
                "English).",
        "choices": tuple(BUILTIN_CORPORA)})
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
        for name in ("max_eval_blocks", "tokenizer_vocab_size", "tokenizer_train_documents",
                     "streaming_validation_documents"):
            value = getattr(self, name)
            if value is not None and value < 1:
                unset = " (or leave it unset)" if self.__dataclass_fields__[name].default is None else ""
                raise ValueError(f"--{name} {value}: it must be >= 1{unset}.")
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


@dataclass
class PrepareArguments:
    """How ``hf-foco prepare-data`` tokenizes and writes (the data itself is described by ``DataArguments``)."""

    num_proc: int = field(default_factory=lambda: os.cpu_count() or 1, metadata={
        "help": "Tokenizing processes (datasets' map num_proc); default: one per CPU core."})
    shard_tokens: int = field(default=100_000_000, metadata={
        "help": "Tokens per shard file (100M: 200 MB shards with a vocabulary of at most 65,536)."})

    def __post_init__(self):
        for name in ("num_proc", "shard_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} {getattr(self, name)}: it must be >= 1.")
