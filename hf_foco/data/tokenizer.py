"""The tokenizer: an existing one loaded offline, or a byte-level BPE trained on the training split.

A trained tokenizer is cached under a key made of the training data's fingerprint and the vocabulary size,
so every optimizer of a comparison (and every rerun) uses the same vocabulary, and it is saved next to the
model so a checkpoint loads anywhere with ``AutoTokenizer``. Byte-level BPE (GPT-2's scheme) needs no
unknown token: any byte string encodes.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from .cache import cache_path, save_atomically

EOS_TOKEN = "<|endoftext|>"
# Bump when the training recipe below changes, so stale cached tokenizers are not reused.
_RECIPE_VERSION = "bytebpe-v1"


def train_bpe(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A GPT-2-style byte-level BPE with ``vocab_size`` entries; ``<|endoftext|>`` is id 0.

    Deterministic: the same texts in the same order give the same merges.
    """
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size < len(alphabet) + 1:
        raise ValueError(f"--tokenizer_vocab_size {vocab_size} is too small: a byte-level BPE needs at least "
                         f"{len(alphabet) + 1} entries (256 bytes and {EOS_TOKEN}).")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS_TOKEN], initial_alphabet=alphabet,
                                  show_progress=False)
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOS_TOKEN, eos_token=EOS_TOKEN,
                                   unk_token=EOS_TOKEN, pad_token=EOS_TOKEN)


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """A hash of everything that decides token ids (vocabulary, merges, normalisation, EOS)."""
    backend = tokenizer.backend_tokenizer.to_str() if tokenizer.is_fast else repr(sorted(tokenizer.get_vocab().items()))
    return hashlib.sha256(f"{backend}|{tokenizer.eos_token_id}".encode()).hexdigest()[:16]


def load_tokenizer(name_or_path: str) -> PreTrainedTokenizerBase:
    """An existing tokenizer (local path, or a Hub name already cached); it must define an EOS token."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    except (OSError, ValueError) as err:
        raise ValueError(f"Cannot load tokenizer {name_or_path!r} ({err}). Pass a local directory, or leave "
                         "--tokenizer_name unset to train a byte-level BPE on the training data.") from err
    if tokenizer.eos_token_id is None:
        raise ValueError(f"Tokenizer {name_or_path!r} has no EOS token, which packing puts between documents.")
    return tokenizer


def cached_bpe(texts: Iterator[str] | Iterable[str], vocab_size: int, data_fingerprint: str,
               cache_dir: str | os.PathLike) -> PreTrainedTokenizerFast:
    """``train_bpe`` on ``texts``, cached under the data fingerprint and vocabulary size."""
    path = cache_path(cache_dir, "tokenizers", _RECIPE_VERSION, data_fingerprint, vocab_size)
    if not Path(path).exists():
        save_atomically(train_bpe(texts, vocab_size), path)
    return AutoTokenizer.from_pretrained(path)
