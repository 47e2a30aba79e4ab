"""Pretraining data: raw text sources, the tokenizer, packing into blocks, prepared token shards, and the
cached pipeline."""

from .arguments import DataArguments, PrepareArguments
from .cache import default_cache_dir
from .corpus import builtin_corpus, hub_corpus, in_validation, local_corpus, split_by_key, stdlib_files
from .packing import collate_blocks, iter_blocks, pack_dataset, pack_stream
from .pipeline import LMData, prepare_lm_data, prepare_token_shards
from .prepared import PreparedTokens, prepared_fingerprint
from .tokenizer import EOS_TOKEN, cached_bpe, load_tokenizer, tokenizer_fingerprint, train_bpe

__all__ = [
    "EOS_TOKEN", "DataArguments", "LMData", "PrepareArguments", "PreparedTokens", "builtin_corpus", "cached_bpe",
    "collate_blocks", "default_cache_dir", "hub_corpus", "in_validation", "iter_blocks", "load_tokenizer",
    "local_corpus", "pack_dataset", "pack_stream", "prepare_lm_data", "prepare_token_shards", "prepared_fingerprint", "split_by_key",
    "stdlib_files", "tokenizer_fingerprint", "train_bpe",
]
