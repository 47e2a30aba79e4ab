"""Pre-tokenized data on disk: shards of token ids written once by ``hf-foco prepare-data``, read by block.

A prepared directory holds, per split (``train``, and the held-out ``validation``), the documents' token ids
in order, each document followed by EOS, as flat little-endian ``uint16`` files (``uint32`` when the
vocabulary has more than 65,536 entries) of at most ``shard_tokens`` tokens each; the tokenizer that wrote
them (``tokenizer/``); and ``index.json``, which names the tokenizer and the source (with their fingerprints)
and each shard's token count and SHA-256. Block ``i`` of a split is tokens ``[i * block_size, (i + 1) *
block_size)`` of the concatenated shards, the same blocks the in-memory packing cuts, so the block size is
chosen at training time, not when preparing.

:class:`PreparedTokens` is a map-style dataset: the Trainer's sampler (accelerate's seeded per-epoch
permutation, split between ranks by ``BatchSamplerShard``) picks block indices and only those blocks are read,
through a memory map. A resume skips sampler indices (accelerate's ``skip_first_batches``) without reading the
blocks it skips.

A directory is written into a sibling ``DIR.partial`` and renamed when complete, so ``DIR`` is never half
written; an interrupted preparation rerun reuses the tokenization ``datasets`` cached there.
"""

from __future__ import annotations

import hashlib
import json
import os
from bisect import bisect_right
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset, Features, List, Value
from datasets.utils.tqdm import tqdm
from transformers import PreTrainedTokenizerBase

from .tokenizer import tokenizer_fingerprint

INDEX = "index.json"
TOKENIZER_DIR = "tokenizer"
FORMAT = "hf_foco prepared tokens"
VERSION = 1
SPLITS = ("train", "validation")


def token_dtype(vocab_size: int) -> np.dtype:
    """``uint16`` when every id fits, else ``uint32``."""
    return np.dtype(np.uint16 if vocab_size <= 2**16 else np.uint32)


def _tokenize(batch: dict, tokenizer: PreTrainedTokenizerBase, column: str) -> dict:
    ids = tokenizer([text or "" for text in batch[column]], add_special_tokens=False)["input_ids"]
    return {"input_ids": [doc + [tokenizer.eos_token_id] for doc in ids]}


class _ShardWriter:
    """Appends token arrays to ``{split}-00000.bin``, ``{split}-00001.bin``, ... of ``shard_tokens`` tokens
    each, hashing as it writes."""

    def __init__(self, directory: Path, split: str, dtype: np.dtype, shard_tokens: int):
        self.directory, self.split, self.dtype, self.shard_tokens = directory, split, dtype, shard_tokens
        self.shards: list[dict] = []
        self.file = None

    def _open(self) -> None:
        name = f"{self.split}-{len(self.shards):05d}.bin"
        self.file, self.hash, self.tokens = open(self.directory / name, "wb"), hashlib.sha256(), 0
        self.shards.append({"file": name})

    def _close(self) -> None:
        self.file.close()
        self.shards[-1].update(tokens=self.tokens, sha256=self.hash.hexdigest())
        self.file = None

    def write(self, ids: np.ndarray) -> None:
        while len(ids):
            if self.file is None:
                self._open()
            piece = np.ascontiguousarray(ids[: self.shard_tokens - self.tokens], dtype=self.dtype.newbyteorder("<"))
            self.file.write(piece.tobytes())
            self.hash.update(piece.tobytes())
            self.tokens += len(piece)
            ids = ids[len(piece):]
            if self.tokens == self.shard_tokens:
                self._close()

    def finish(self) -> list[dict]:
        if self.file is not None:
            self._close()
        return self.shards


def _write_split(dataset: Dataset, tokenizer: PreTrainedTokenizerBase, tokenizer_fingerprint: str, column: str,
                 directory: Path, split: str, dtype: np.dtype, num_proc: int, shard_tokens: int) -> dict:
    """Tokenize ``dataset`` in ``num_proc`` processes (``datasets.map``, cached in ``directory``) and write its
    flat token stream as shards; the split's index entry."""
    tokenized = dataset.map(
        _tokenize, batched=True, num_proc=num_proc if num_proc > 1 else None, remove_columns=dataset.column_names,
        fn_kwargs=dict(tokenizer=tokenizer, column=column), features=Features({"input_ids": List(Value(dtype.name))}),
        cache_file_name=str(directory / f".tokenized-{split}-{dataset._fingerprint}-{tokenizer_fingerprint}.arrow"),
        desc=f"Tokenizing {split}")
    writer = _ShardWriter(directory, split, dtype, shard_tokens)
    with tqdm(total=len(tokenized), desc=f"Writing {split} shards", unit="doc") as bar:
        for table in tokenized.with_format("arrow").iter(batch_size=10_000):
            writer.write(table.column("input_ids").combine_chunks().flatten().to_numpy())
            bar.update(table.num_rows)
    shards = writer.finish()
    return {"documents": len(tokenized), "tokens": sum(s["tokens"] for s in shards), "shards": shards}


def describe(tokenizer: PreTrainedTokenizerBase, tokenizer_name: str, source: str,
             source_fingerprints: Mapping[str, str], column: str) -> dict:
    """What a prepared directory is made of: the part of ``index.json`` a reuse must match."""
    return {"tokenizer": {"name": tokenizer_name, "fingerprint": tokenizer_fingerprint(tokenizer), "size": len(tokenizer),
                          "eos_token_id": tokenizer.eos_token_id},
            "source": {"description": source, "fingerprints": dict(source_fingerprints), "text_column": column}}


def write_prepared(directory: str | os.PathLike, splits: Mapping[str, Dataset], tokenizer: PreTrainedTokenizerBase,
                   made_of: dict, num_proc: int, shard_tokens: int) -> dict:
    """Prepare ``directory`` from the ``train`` and ``validation`` datasets (``made_of`` from :func:`describe`);
    its index."""
    directory = Path(directory)
    partial = directory.with_name(directory.name + ".partial")
    partial.mkdir(parents=True, exist_ok=True)
    for stale in partial.glob("*.bin"):
        stale.unlink()
    dtype = token_dtype(len(tokenizer))
    index = {"format": FORMAT, "version": VERSION, "dtype": dtype.name, **made_of,
             "splits": {split: _write_split(splits[split], tokenizer, made_of["tokenizer"]["fingerprint"],
                                            made_of["source"]["text_column"], partial, split, dtype, num_proc,
                                            shard_tokens) for split in SPLITS}}
    tokenizer.save_pretrained(partial / TOKENIZER_DIR)
    for cached in partial.glob(".tokenized-*"):
        cached.unlink()
    (partial / INDEX).write_text(json.dumps(index, indent=1) + "\n")
    os.replace(partial, directory)
    return index


def read_index(directory: str | os.PathLike) -> dict:
    """``directory``'s index, checked: a directory that is not a prepared one is an error saying how to make it."""
    path = Path(directory) / INDEX
    try:
        index = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"--prepared_data {directory} is not a prepared directory (no {INDEX}): prepare it first "
                         f"with `hf-foco prepare-data --prepared_data {directory} ...` (the README's Recipes section "
                         "shows how).") from None
    except ValueError as err:
        raise ValueError(f"{path} is corrupt ({err}): remove {directory} and prepare it again.") from None
    if index.get("format") != FORMAT or index.get("version") != VERSION:
        raise ValueError(f"{path} is not a version-{VERSION} index of prepared tokens (format "
                         f"{index.get('format')!r}, version {index.get('version')!r}): prepare {directory} again "
                         "with this version of hf-foco.")
    return index


def prepared_fingerprint(directory: str | os.PathLike) -> str:
    """A hash of ``directory``'s index: its source, tokenizer and every shard's checksum."""
    return hashlib.sha256((Path(directory) / INDEX).read_bytes()).hexdigest()[:16]


def _shard_problem(path: Path, shard: dict, itemsize: int) -> str | None:
    if not path.is_file():
        return f"{path} is missing"
    size, expected = path.stat().st_size, shard["tokens"] * itemsize
    if size != expected:
        return (f"{path} is {'truncated' if size < expected else 'too long'}: {size:,} bytes where {INDEX} records "
                f"{shard['tokens']:,} tokens ({expected:,} bytes)")
    return None


def check_shards(directory: str | os.PathLike, index: dict, checksums: bool = False) -> None:
    """Every shard of ``index`` exists with its recorded size (and, with ``checksums``, its SHA-256), else an
    error naming the file and the fix."""
    itemsize = np.dtype(index["dtype"]).itemsize
    for split in SPLITS:
        for shard in index["splits"][split]["shards"]:
            path = Path(directory) / shard["file"]
            problem = _shard_problem(path, shard, itemsize)
            if problem is None and checksums and _sha256(path) != shard["sha256"]:
                problem = f"{path} is corrupt: its SHA-256 differs from the one {INDEX} records"
            if problem:
                raise ValueError(f"{problem}. Remove {directory} and prepare it again with `hf-foco prepare-data`.")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


def reuse_prepared(directory: str | os.PathLike, made_of: dict) -> dict:
    """The index of an existing prepared ``directory`` made of ``made_of``, after checking every shard's
    checksum; one made of anything else is an error naming both and the fix."""
    index = read_index(directory)
    for part, what, key in (("source", "from other data", "description"),
                            ("tokenizer", "with another tokenizer", "name")):
        then, now = index[part], made_of[part]
        if then != now:
            raise ValueError(f"{directory} was prepared {what} than this command's: {then[key]!r} ({json.dumps(then)}), "
                             f"not {now[key]!r} ({json.dumps(now)}). Pass another --prepared_data, or remove "
                             f"{directory} to prepare it again.")
    check_shards(directory, index, checksums=True)
    return index


class PreparedTokens(torch.utils.data.Dataset):
    """Blocks of ``block_size`` tokens of one split of a prepared directory, read on demand.

    ``self[i]`` is ``{"input_ids": int64 array}``, block ``i`` of the split's token stream (what
    :func:`hf_foco.data.collate_blocks` takes). Shards are memory-mapped on first use in each process (and
    never pickled, so DataLoader workers open their own). A missing or truncated shard is an error when the
    dataset is made; a token id outside the vocabulary (a damaged shard) when its block is read.
    """

    def __init__(self, directory: str | os.PathLike, split: str, block_size: int, index: dict | None = None):
        self.index = index or read_index(directory)
        self.directory, self.split, self.block_size = Path(directory), split, block_size
        self.dtype = np.dtype(self.index["dtype"]).newbyteorder("<")
        self.vocab_size = self.index["tokenizer"]["size"]
        shards = self.index["splits"][split]["shards"]
        check_shards(directory, self.index)
        self.files = [self.directory / s["file"] for s in shards]
        self.starts = np.cumsum([0, *(s["tokens"] for s in shards)]).tolist()
        self._maps: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return self.starts[-1] // self.block_size

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_maps": {}}

    def _shard(self, number: int) -> np.ndarray:
        if number not in self._maps:
            self._maps[number] = np.memmap(self.files[number], dtype=self.dtype, mode="r")
        return self._maps[number]

    def tokens(self, start: int, end: int) -> np.ndarray:
        """Tokens ``[start, end)`` of the split's stream, across shard boundaries, as int64."""
        pieces = []
        number = bisect_right(self.starts, start) - 1
        while start < end:
            stop = min(end, self.starts[number + 1])
            piece = self._shard(number)[start - self.starts[number]: stop - self.starts[number]]
            if len(piece) and int(piece.max()) >= self.vocab_size:
                at = int(np.argmax(piece >= self.vocab_size))
                raise ValueError(f"{self.files[number]} is corrupt: its token {start - self.starts[number] + at:,} is "
                                 f"id {int(piece[at])}, outside the tokenizer's {self.vocab_size} ids. Remove "
                                 f"{self.directory} and prepare it again with `hf-foco prepare-data`.")
            pieces.append(piece)
            start, number = stop, number + 1
        return np.concatenate(pieces).astype(np.int64)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        if not 0 <= i < len(self):
            raise IndexError(f"block {i} of {len(self)}")
        return {"input_ids": self.tokens(i * self.block_size, (i + 1) * self.block_size)}
