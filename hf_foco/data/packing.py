"""Packing: documents joined with EOS and cut into fixed ``block_size`` blocks.

No padding and no per-batch remainders: a carry runs across the whole corpus, so the only tokens dropped are
the final partial block. The same generator packs map-style datasets (then stored as a ``Dataset``, cached)
and streaming ones (wrapped as an ``IterableDataset``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import torch
from datasets import Dataset, IterableDataset
from datasets.utils.tqdm import tqdm
from transformers import PreTrainedTokenizerBase

from .corpus import text_batches


def iter_blocks(documents: Iterable[Sequence[int]], block_size: int, eos_token_id: int) -> Iterator[np.ndarray]:
    """Blocks of ``block_size`` ids from ``documents``, each followed by ``eos_token_id``, in order."""
    carry = np.empty(0, dtype=np.int64)
    pieces, pending = [], 0
    eos = np.array([eos_token_id], dtype=np.int64)
    for doc in documents:
        pieces += [np.asarray(doc, dtype=np.int64), eos]
        pending += len(doc) + 1
        if pending >= 64 * block_size:  # concatenate in chunks: cheap, and memory stays bounded
            carry = yield from _emit(np.concatenate([carry, *pieces]), block_size)
            pieces, pending = [], 0
    yield from _emit(np.concatenate([carry, *pieces]), block_size)


def _emit(flat: np.ndarray, block_size: int):
    n = len(flat) // block_size
    yield from flat[: n * block_size].reshape(n, block_size)
    return flat[n * block_size:]


def tokenized_documents(dataset: Dataset | IterableDataset, tokenizer: PreTrainedTokenizerBase,
                        text_column: str) -> Iterator[list[int]]:
    """Token ids of each document, tokenized a batch at a time."""
    for texts in text_batches(dataset, text_column):
        yield from tokenizer(texts, add_special_tokens=False)["input_ids"]


def pack_dataset(dataset: Dataset | IterableDataset, tokenizer: PreTrainedTokenizerBase, text_column: str, block_size: int,
                 desc: str = "Packing") -> Dataset:
    """A map-style dataset of packed ``input_ids`` blocks, built in memory (the caller caches it on disk).

    Corpora larger than memory should be streamed (:func:`pack_stream`).
    """
    docs = tqdm(tokenized_documents(dataset, tokenizer, text_column), total=getattr(dataset, "num_rows", None), desc=desc, unit="doc")
    blocks = list(iter_blocks(docs, block_size, tokenizer.eos_token_id))
    array = np.stack(blocks).astype(np.int32) if blocks else np.empty((0, block_size), dtype=np.int32)
    return Dataset.from_dict({"input_ids": array})


def pack_stream(dataset: IterableDataset, tokenizer: PreTrainedTokenizerBase, text_column: str,
                block_size: int) -> IterableDataset:
    """A streaming dataset of packed blocks, produced lazily as training reads it.

    Each shard of the source stream is packed on its own, so DataLoader workers can split the shards between
    them; a shard (typically millions of tokens) drops only its last partial block.
    """
    def blocks(shards: list[int]):
        for shard in shards:  # datasets calls this once per shard
            docs = tokenized_documents(dataset.shard(dataset.num_shards, shard), tokenizer, text_column)
            for block in iter_blocks(docs, block_size, tokenizer.eos_token_id):
                yield {"input_ids": block.tolist()}

    return IterableDataset.from_generator(blocks, gen_kwargs={"shards": list(range(dataset.num_shards))})


def collate_blocks(features: list[dict]) -> dict[str, torch.Tensor]:
    """Stack blocks; the labels are the inputs (the model shifts them), EOS included, nothing masked."""
    input_ids = torch.as_tensor(np.stack([np.asarray(f["input_ids"]) for f in features]), dtype=torch.long)
    return {"input_ids": input_ids, "labels": input_ids}
