"""Where the raw text comes from: a built-in corpus, local files, or a Hub dataset.

Every source comes back as ``{"train": ..., "validation": ...}`` with one text column, read through
``datasets`` so that its cache (keyed by file paths, sizes and modification times) notices edited files and
the dataset fingerprint can key the tokenizer and packing caches downstream.

The built-in corpora come with the running interpreter, so they are always present and offline: ``source`` is
its standard library (``.py`` files, site-packages excluded), a few million tokens of real code, enough to
show optimizers apart in CPU minutes; ``prose`` is the English of the same files' docstrings and of
``pydoc_data.topics`` (the language reference pages ``help()`` shows), a second corpus of another kind.
"""

from __future__ import annotations

import ast
import glob
import hashlib
import json
import logging
import os
import sys
import sysconfig
from collections.abc import Iterator, Sequence
from pathlib import Path

import pyarrow.compute as pc
from datasets import Dataset, DatasetDict, IterableDataset, concatenate_datasets, load_dataset
from datasets.exceptions import DatasetGenerationError

logger = logging.getLogger(__name__)

BUILTIN_TEXT_COLUMN = "text"
_TEXT_SUFFIXES = {".txt", ".text", ".py", ".md"}
_JSON_SUFFIXES = {".json", ".jsonl"}
# The built-in corpora by name, with the description a run's logs and model card give.
BUILTIN_CORPORA = {"source": "the Python standard library (built-in)",
                   "prose": "the Python standard library's docstrings and pydoc topics (built-in prose)"}
# Bump when prose_documents changes what it extracts, so cached prose corpora are rebuilt.
_PROSE_VERSION = "prose-v1"
_TOPIC_PREFIX = "pydoc_data.topics:"


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files(root: Path | None = None) -> list[str]:
    """Relative paths of the standard library's ``.py`` files, sorted; installed packages are left out."""
    root = root or stdlib_root()
    return sorted(str(p.relative_to(root)) for p in root.rglob("*.py")
                  if not {"site-packages", "dist-packages"} & set(p.relative_to(root).parts))


def in_validation(key: str, fraction: float) -> bool:
    """Whether the document named ``key`` is held out: a hash, so the split needs no seed, ignores file order
    and stays put when other documents are added or removed."""
    return int(hashlib.sha256(key.encode()).hexdigest()[:12], 16) < fraction * 16**12


def split_by_key(keys: Sequence[str], fraction: float) -> tuple[list[int], list[int]]:
    """Indices of ``keys`` that go to (train, validation)."""
    val = [i for i, k in enumerate(keys) if in_validation(k, fraction)]
    held = set(val)
    return [i for i in range(len(keys)) if i not in held], val


def builtin_corpus(validation_fraction: float, cache_dir: str | None = None, kind: str = "source") -> DatasetDict:
    """A built-in corpus, split by document key: ``source``, the standard library, one document per file
    (key: its path); ``prose``, each file's docstrings as one document (key: its path) and each
    ``pydoc_data`` topic as one (key: its name)."""
    if kind not in BUILTIN_CORPORA:
        raise ValueError(f"--builtin_corpus {kind!r}: choose one of {', '.join(BUILTIN_CORPORA)}.")
    root = stdlib_root()
    files = stdlib_files(root)
    if not files:
        raise ValueError(f"The built-in corpus is empty: no .py files under {root}. Pass --train_files or "
                         "--dataset_name.")
    if kind == "prose":
        return _prose_corpus(root, files, validation_fraction, cache_dir)
    train, val = split_by_key(files, validation_fraction)
    _require_validation(val, "the built-in corpus", validation_fraction)
    data_files = {"train": [str(root / files[i]) for i in train], "validation": [str(root / files[i]) for i in val]}
    # A few stdlib test files are deliberately not UTF-8: replace, don't crash.
    return load_dataset("text", data_files=data_files, sample_by="document", encoding_errors="replace",
                        cache_dir=cache_dir)


def _prose_corpus(root: Path, files: list[str], validation_fraction: float, cache_dir: str | None) -> DatasetDict:
    """The prose corpus, extracted once per interpreter and cached by ``datasets`` (parsing every module
    takes a while); the cache key holds the interpreter, the documents' keys and the extractor's version."""
    from pydoc_data.topics import topics

    keys = [*files, *(_TOPIC_PREFIX + name for name in sorted(topics))]
    train, val = split_by_key(keys, validation_fraction)
    _require_validation(val, "the built-in corpus", validation_fraction)
    return DatasetDict({split: Dataset.from_generator(
        prose_documents, cache_dir=cache_dir, split=split,
        gen_kwargs=dict(root=str(root), keys=[keys[i] for i in part], python=sys.version, version=_PROSE_VERSION))
        for split, part in (("train", train), ("validation", val))})


def docstrings(source: str) -> list[str]:
    """The docstrings of a module's source (the module's, then each class's and function's, in source
    order), indentation removed; none when the source does not parse."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):  # a few stdlib test files are deliberately broken
        return []

    def visit(node):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            if text := ast.get_docstring(node):
                yield text
        for child in ast.iter_child_nodes(node):
            yield from visit(child)

    return list(visit(tree))


def prose_documents(root: str, keys: list[str], python: str, version: str) -> Iterator[dict]:
    """``{"text"}`` rows of the prose corpus for ``keys``: a module path gives its docstrings joined by blank
    lines, a ``pydoc_data.topics:NAME`` key that topic's text; documents without text are left out.
    (``python`` and ``version`` only key the cache.)"""
    from pydoc_data.topics import topics

    for key in keys:
        if key.startswith(_TOPIC_PREFIX):
            text = topics[key.removeprefix(_TOPIC_PREFIX)].strip()
        else:
            text = "\n\n".join(docstrings((Path(root) / key).read_bytes().decode("utf-8", "replace")))
        if text:
            yield {BUILTIN_TEXT_COLUMN: text}


def expand_files(patterns: Sequence[str], what: str) -> list[str]:
    """Paths matching ``patterns`` (globs allowed); a pattern matching nothing, or no file (only directories),
    is an error naming it."""
    files = []
    for pattern in patterns:
        matches = sorted(glob.glob(os.path.expanduser(pattern), recursive=True))
        if not matches:
            raise FileNotFoundError(f"{what}: no file matches {pattern!r}. Check the path, or leave "
                                    "--train_files unset to use the built-in corpus.")
        found = [m for m in matches if os.path.isfile(m)]
        if not found:
            example = os.path.join(matches[0], "**", "*.txt")
            raise FileNotFoundError(f"{what}: {pattern!r} matches only directories ({matches[0]!r}), no data file. "
                                    f"Pass the files in them, e.g. {example!r}.")
        files.extend(found)
    return files


def _builder_for(files: Sequence[str]) -> str:
    suffixes = {Path(f).suffix.lower() for f in files}
    if suffixes <= _JSON_SUFFIXES:
        return "json"
    if suffixes <= _TEXT_SUFFIXES:
        return "text"
    raise ValueError(f"Cannot tell the format of data files with suffixes {sorted(suffixes)}: use only text "
                     f"({', '.join(sorted(_TEXT_SUFFIXES))}) or only JSON ({', '.join(sorted(_JSON_SUFFIXES))}) files.")


def local_corpus(train_files: Sequence[str], validation_files: Sequence[str] | None, validation_fraction: float,
                 text_column: str = "text", sample_by: str = "line", cache_dir: str | None = None) -> DatasetDict:
    """Local text (one document per line/paragraph/file, as ``sample_by`` says) or JSON-lines files.

    Without validation files, documents are held out by hashing their row index, which is stable as long as
    the files are the same. Bytes that are not UTF-8 are replaced (U+FFFD), with a warning that counts them:
    a binary or Latin-1 file would otherwise train silently on replacement characters. A JSON-lines file that
    does not parse is an error naming its first bad line.
    """
    data_files = {"train": expand_files(train_files, "--train_files")}
    if validation_files:
        data_files["validation"] = expand_files(validation_files, "--validation_files")
    builder = _builder_for([f for fs in data_files.values() for f in fs])
    if builder == "json":  # datasets' JSON reader infers the columns from a file's first row, and has none here
        for split, files in data_files.items():
            if empty := next((f for f in files if not _has_content(f)), None):
                raise ValueError(f"--{split}_files: {empty} holds no JSON rows (it is empty): add rows, one JSON "
                                 f'object per line like {{"{text_column}": "some text"}}, or leave the file out.')
    kwargs = dict(sample_by=sample_by, encoding_errors="replace") if builder == "text" else {}
    try:
        raw = load_dataset(builder, data_files=data_files, cache_dir=cache_dir, **kwargs)
    except DatasetGenerationError as err:
        for split, files in data_files.items():
            if builder == "json" and (where := first_bad_json_line(files)):
                raise ValueError(f"--{split}_files: {where}. Fix that line (one JSON object per line, e.g. "
                                 f'{{"{text_column}": "some text"}}), or leave the file out.') from err
        raise
    if builder == "text":
        for split, dataset in raw.items():
            warn_replaced_bytes(dataset, split)
    if validation_files:
        return raw
    return split_dataset(raw["train"], validation_fraction, "the local files", text_column)


def _has_content(file: str) -> bool:
    """Whether ``file`` holds anything but whitespace."""
    with open(file, "rb") as f:
        return any(line.strip() for line in f)


def first_bad_json_line(files: Sequence[str]) -> str | None:
    """Where the first line of ``files`` that is not a JSON value is ("file line N: reason"), or None."""
    for file in files:
        with open(file, encoding="utf-8", errors="replace") as f:
            for number, line in enumerate(f, 1):
                if line.strip():
                    try:
                        json.loads(line)
                    except ValueError as err:
                        return f"{file} line {number} is not valid JSON ({err})"
    return None


def warn_replaced_bytes(dataset: Dataset, split: str) -> int:
    """Warn when the text read holds U+FFFD, what invalid UTF-8 bytes decode to; the count."""
    column = dataset.data.column("text")
    replaced = pc.sum(pc.count_substring(column, "\ufffd")).as_py() or 0
    if replaced:
        total = pc.sum(pc.utf8_length(column)).as_py() or 1
        logger.warning(f"The {split} files hold {replaced} characters that are not UTF-8 ({replaced / total:.1%} of the "
                       "text), read as U+FFFD: re-encode them as UTF-8 (or leave binary files out of "
                       "--train_files).")
    return replaced


def hub_corpus(name: str, config: str | None, split: str, validation_split: str | None,
               validation_fraction: float, streaming: bool, streaming_validation_documents: int,
               text_column: str = "text", cache_dir: str | None = None) -> DatasetDict | dict[str, IterableDataset]:
    """A Hub dataset (or one already in the local cache when offline).

    A stream has no length to take a fraction of: without a validation split, the first
    ``streaming_validation_documents`` documents of its first shard are held out and training reads the
    other shards (llm.c likewise holds out its first shard). Whole shards keep the two disjoint, which
    ``IterableDataset.skip`` does not once DataLoader workers split the shards.
    """
    load = dict(path=name, name=config, streaming=streaming, cache_dir=cache_dir)
    train = load_dataset(split=split, **load)
    if validation_split:
        return {"train": train, "validation": load_dataset(split=validation_split, **load)}
    if streaming:
        n = train.num_shards
        if n < 2:
            raise ValueError(f"Streamed dataset {name!r} has a single shard, so no shard can be held out for "
                             "validation: pass --validation_split.")
        return {"train": concatenate_datasets([train.shard(n, i) for i in range(1, n)]),
                "validation": train.shard(n, 0).take(streaming_validation_documents)}
    return split_dataset(train, validation_fraction, f"dataset {name!r}", text_column)


def text_batches(dataset: Dataset | IterableDataset, column: str, batch_size: int = 1000) -> Iterator[list[str]]:
    """The documents of ``column``, a batch at a time (the Rust tokenizer parallelises a batch). A row
    without text (``null`` in a JSON-lines file) is an empty document, as an empty string is."""
    for batch in dataset.select_columns([column]).iter(batch_size=batch_size):
        yield [text or "" for text in batch[column]]


def split_dataset(dataset: Dataset, fraction: float, what: str, text_column: str) -> DatasetDict:
    """Hold out documents by a hash of their row index (stable while the data is the same)."""
    check_text_column(dataset, text_column, "training")
    texts = (text for batch in text_batches(dataset, text_column) for text in batch)
    if not any(text.strip() for text in texts):  # stops at the first document with text
        raise ValueError(f"The corpus is empty: {what} hold no text in column {text_column!r}. Point --train_files "
                         "or --dataset_name at data that has some.")
    train, val = split_by_key([str(i) for i in range(len(dataset))], fraction)
    _require_validation(val, what, fraction)
    return DatasetDict(train=dataset.select(train), validation=dataset.select(val))


def _require_validation(val: Sequence, what: str, fraction: float) -> None:
    if not val:
        raise ValueError(f"No validation documents in {what} at --validation_fraction {fraction}: raise it, "
                         "or pass --validation_files / --validation_split.")


def check_text_column(dataset: Dataset | IterableDataset, column: str, split: str) -> None:
    """Fail before any tokenization when the text column is missing, naming the columns there are."""
    names = dataset.column_names
    if names is None:  # a streaming dataset whose features are unknown until read
        names = list(next(iter(dataset)).keys())
    if column not in names:
        raise ValueError(f"The {split} data has no text column {column!r}; its columns are {names}. Pass "
                         "--text_column with one of them.")
    feature = (dataset.features or {}).get(column)
    if feature is not None and getattr(feature, "dtype", None) not in ("string", "large_string"):
        # e.g. a JSON-lines column of numbers, or of text mixed with NaN / numbers, which arrow reads as JSON.
        raise ValueError(f"The {split} data's column {column!r} holds {feature} values, not text only (numbers or "
                         f"NaN in a JSON-lines file?). Make every row's {column!r} a string, or pass --text_column "
                         "naming a text column.")
