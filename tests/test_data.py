"""The data layer: packing keeps every token, splits and tokenizers are deterministic, caches invalidate."""

import os
import random
from types import SimpleNamespace

import numpy as np
import pytest
from datasets import Dataset

from hf_foco.data import (
    EOS_TOKEN,
    collate_blocks,
    in_validation,
    iter_blocks,
    pack_dataset,
    pack_stream,
    prepare_lm_data,
    split_by_key,
    stdlib_files,
    train_bpe,
)
from hf_foco.data import corpus as corpus_module
from hf_foco.data import pipeline as pipeline_module
from hf_foco.data.corpus import builtin_corpus, docstrings, prose_documents, stdlib_root

TEXTS = [
    "def add(a, b):\n    return a + b\n",
    "class Point:\n    def __init__(self, x, y):\n        self.x, self.y = x, y\n",
    "import os\nprint(os.getcwd())  # naïve café ünïcode ✓\n",
    "",
    "for i in range(10):\n    print(i * i)\n" * 5,
] * 8


def packed_reference(docs, block_size, eos):
    """Brute force: one flat list of every document followed by EOS, cut into whole blocks."""
    flat = [t for doc in docs for t in [*doc, eos]]
    n = len(flat) // block_size
    return [flat[i * block_size:(i + 1) * block_size] for i in range(n)]


@pytest.mark.parametrize("block_size", [1, 7, 64])
def test_iter_blocks_loses_only_the_final_remainder(block_size):
    rng = random.Random(block_size)
    # Long documents too, so the chunked concatenation (every 64 blocks) is crossed many times.
    docs = [[rng.randrange(1, 500) for _ in range(rng.choice([0, 1, 5, 300, 5000]))] for _ in range(60)]
    blocks = [b.tolist() for b in iter_blocks(docs, block_size, eos_token_id=0)]
    assert blocks == packed_reference(docs, block_size, 0)
    total = sum(len(d) + 1 for d in docs)
    assert total - len(blocks) * block_size < block_size


@pytest.fixture(scope="module")
def tokenizer():
    return train_bpe(TEXTS, vocab_size=300)


def test_bpe_training_is_deterministic_and_lossless(tokenizer):
    again = train_bpe(TEXTS, vocab_size=300)
    assert again.backend_tokenizer.to_str() == tokenizer.backend_tokenizer.to_str()
    assert len(tokenizer) == 300
    assert tokenizer.convert_tokens_to_ids(EOS_TOKEN) == tokenizer.eos_token_id == 0
    # Byte-level: text never seen in training, any script, round-trips exactly.
    for text in ["x = {'κλειδί': 'значение'}\n\t", "emoji 🙂 and\r\nCRLF", TEXTS[2]]:
        assert tokenizer.decode(tokenizer(text)["input_ids"]) == text


def test_pack_dataset_matches_per_document_tokenization(tokenizer):
    dataset = Dataset.from_dict({"text": TEXTS})
    packed = pack_dataset(dataset, tokenizer, "text", block_size=16)
    docs = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in TEXTS]
    assert packed["input_ids"] == packed_reference(docs, 16, tokenizer.eos_token_id)


def test_rows_without_text_pack_as_empty_documents(tokenizer):
    """A JSON-lines ``null`` text packs as an empty document (its EOS alone), as an empty string does."""
    dataset = Dataset.from_dict({"text": [text or None for text in TEXTS]})
    assert dataset["text"].count(None) == TEXTS.count("") > 0
    docs = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in TEXTS]
    packed = pack_dataset(dataset, tokenizer, "text", block_size=16)
    assert packed["input_ids"] == packed_reference(docs, 16, tokenizer.eos_token_id)


def test_pack_stream_packs_each_shard_in_order(tokenizer):
    dataset = Dataset.from_dict({"text": TEXTS})
    stream = pack_stream(dataset.to_iterable_dataset(num_shards=3), tokenizer, "text", block_size=16)
    expected = []
    for shard in range(3):  # contiguous shards of the 40 rows: 14, 13, 13
        docs = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in dataset.shard(3, shard)["text"]]
        expected += packed_reference(docs, 16, tokenizer.eos_token_id)
    assert [row["input_ids"] for row in stream] == expected


def test_collate_blocks_labels_are_the_inputs_with_eos_kept():
    batch = collate_blocks([{"input_ids": np.array([0, 5, 6])}, {"input_ids": [7, 0, 8]}])
    assert batch["input_ids"].tolist() == [[0, 5, 6], [7, 0, 8]]
    assert batch["labels"].tolist() == [[0, 5, 6], [7, 0, 8]]  # nothing masked: EOS is predicted too


def test_split_by_key_is_order_free_and_stable():
    keys = [f"pkg/mod_{i}.py" for i in range(2000)]
    _, val = split_by_key(keys, 0.1)
    held = {keys[i] for i in val}
    assert 150 < len(held) < 250  # about 10 %
    shuffled = keys[:]
    random.Random(0).shuffle(shuffled)
    assert {shuffled[i] for i in split_by_key(shuffled, 0.1)[1]} == held
    # Adding documents leaves everyone else's assignment alone.
    more = keys + [f"new/{i}.py" for i in range(500)]
    assert {k for k in more[:2000] if in_validation(k, 0.1)} == held


def test_builtin_corpus_is_the_stdlib_without_site_packages():
    files = stdlib_files()
    assert len(files) > 500 and files == sorted(files)
    assert all(f.endswith(".py") and "site-packages" not in f for f in files)
    assert {"os.py", "json/__init__.py"} <= set(files)
    assert (stdlib_root() / "os.py").is_file()


MODULE = '''"""Module summary.

Second paragraph."""

import os


class Shape:
    """A shape.

        An indented example.
    Back.
    """

    def area(self):
        """Its area."""
        def helper():
            """Nested."""
        return 0

    def undocumented(self):
        x = "not a docstring"


async def fetch():
    """Fetch it."""
'''


def test_docstrings_come_in_source_order_without_indentation():
    assert docstrings(MODULE) == ["Module summary.\n\nSecond paragraph.", "A shape.\n\n    An indented example.\nBack.",
                                  "Its area.", "Nested.", "Fetch it."]
    assert docstrings("def broken(:\n") == []


@pytest.fixture
def small_stdlib(tmp_path, monkeypatch):
    """The built-in corpora over 40 standard-library modules only (fast), in a private datasets cache."""
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf"))
    files = [f for f in stdlib_files() if f.count("/") == 0][:40]
    monkeypatch.setattr(corpus_module, "stdlib_files", lambda root=None: files)
    return files


def _texts(dataset):
    return list(dataset["text"])


def test_prose_corpus_is_english_documents_split_by_key(small_stdlib, tmp_path):
    from pydoc_data.topics import topics

    corpus = builtin_corpus(0.2, kind="prose")
    train, validation = _texts(corpus["train"]), _texts(corpus["validation"])
    assert train and validation and all(text.strip() for text in train + validation)
    keys = [*small_stdlib, *(f"pydoc_data.topics:{name}" for name in sorted(topics))]
    held = [k for k in keys if in_validation(k, 0.2)]
    root = str(stdlib_root())
    assert validation == [row["text"] for row in prose_documents(root, held, "", "")]
    assert train == [row["text"] for row in prose_documents(root, [k for k in keys if k not in held], "", "")]
    # English prose, unlike the source files it came from: "the" is one word in 20 (in code one in 35, in its
    # comments and docstrings), and code's brackets, "=" and "_" are rarer.
    text = "\n".join(train)
    code = "\n".join((stdlib_root() / f).read_text(errors="replace") for f in small_stdlib)

    def the(t):
        return t.lower().split().count("the") / len(t.split())

    def symbols(t):
        return sum(c in "()[]{}=_" for c in t) / len(t)

    assert the(text) > max(0.05, 2 * the(code))
    assert symbols(text) < 0.7 * symbols(code)
    # Deterministic: cached, and rebuilt identically in another cache.
    again = builtin_corpus(0.2, kind="prose")
    assert again["train"]._fingerprint == corpus["train"]._fingerprint
    elsewhere = builtin_corpus(0.2, kind="prose", cache_dir=str(tmp_path / "elsewhere"))
    assert _texts(elsewhere["train"]) == train and _texts(elsewhere["validation"]) == validation


def test_the_source_corpus_is_unchanged(small_stdlib):
    """The same files read the same way as before the prose corpus existed: the same fingerprint, hence the
    same cached tokenizer and blocks."""
    from datasets import load_dataset

    root = stdlib_root()
    data_files = {"train": [str(root / f) for f in small_stdlib if not in_validation(f, 0.2)],
                  "validation": [str(root / f) for f in small_stdlib if in_validation(f, 0.2)]}
    expected = load_dataset("text", data_files=data_files, sample_by="document", encoding_errors="replace")
    corpus = builtin_corpus(0.2)
    for split in ("train", "validation"):
        assert corpus[split]._fingerprint == expected[split]._fingerprint
        assert _texts(corpus[split]) == [(root / f).read_text(errors="replace") for f in data_files[split]]


def test_each_builtin_corpus_trains_its_own_tokenizer(small_stdlib, tmp_path):
    args = dict(train_files=None, validation_fraction=0.2, block_size=64, tokenizer_vocab_size=400)
    source = prepare_lm_data(_data_args(tmp_path, **args))
    prose = prepare_lm_data(_data_args(tmp_path, **args, builtin_corpus="prose"))
    assert "docstrings" in prose.source and "docstrings" not in source.source
    assert len(list((tmp_path / "cache" / "tokenizers").rglob("tokenizer.json"))) == 2
    assert source.tokenizer.get_vocab() != prose.tokenizer.get_vocab()
    assert prose.tokenizer.decode(prose.train[0]["input_ids"]).strip()


def ids(dataset):
    """Every block of a packed dataset (numpy-formatted) as lists."""
    return dataset[:]["input_ids"].tolist()


def _data_args(tmp_path, **overrides):
    fields = dict(dataset_name=None, dataset_config_name=None, dataset_split="train", validation_split=None,
                  streaming=False, streaming_validation_documents=10, train_files=[str(tmp_path / "corpus" / "*.txt")],
                  validation_files=None, sample_by="document", text_column="text", validation_fraction=0.25,
                  max_eval_blocks=None, block_size=16, tokenizer_name=None, tokenizer_vocab_size=300,
                  tokenizer_train_documents=None, data_cache_dir=str(tmp_path / "cache"), prepared_data=None,
                  builtin_corpus=None)
    return SimpleNamespace(**{**fields, **overrides})


def _write_corpus(tmp_path, texts):
    corpus = tmp_path / "corpus"
    corpus.mkdir(exist_ok=True)
    for i, text in enumerate(texts):
        (corpus / f"doc{i:02d}.txt").write_text(text)
    return corpus


def test_prepare_lm_data_caches_and_invalidates_on_edit(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf"))
    corpus = _write_corpus(tmp_path, [t for t in TEXTS if t])
    first = prepare_lm_data(_data_args(tmp_path))
    assert len(first.train) > 0 and len(first.validation) > 0

    def no_repacking(*args, **kwargs):
        raise AssertionError("the packed blocks should have come from the cache")

    monkeypatch.setattr(pipeline_module, "pack_dataset", no_repacking)
    second = prepare_lm_data(_data_args(tmp_path))
    assert ids(second.train) == ids(first.train)
    assert ids(second.validation) == ids(first.validation)
    monkeypatch.undo()

    # Edit one file (same size, so only the content and mtime differ): everything downstream is rebuilt.
    target = corpus / "doc00.txt"
    text = target.read_text()
    target.write_text(text.replace("a + b", "b + a"))
    os.utime(target, ns=(target.stat().st_atime_ns, target.stat().st_mtime_ns + 10**9))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf"))
    edited = prepare_lm_data(_data_args(tmp_path))
    decoded = edited.tokenizer.decode([t for split in (edited.train, edited.validation) for b in ids(split) for t in b])
    assert "b + a" in decoded and "a + b" in decoded  # the edited file, and the others unchanged


def test_validation_blocks_are_a_fixed_prefix(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf"))
    _write_corpus(tmp_path, [t for t in TEXTS if t])
    full = prepare_lm_data(_data_args(tmp_path))
    capped = prepare_lm_data(_data_args(tmp_path, max_eval_blocks=2))
    assert ids(capped.validation) == ids(full.validation)[:2]


@pytest.mark.parametrize("case, message", [
    ("missing_files", "no file matches"),
    ("empty_corpus", "empty"),
    ("too_few_tokens", "fewer tokens than one block"),
    ("missing_column", "no text column 'text'"),
])
def test_bad_data_fails_with_a_clear_message(tmp_path, monkeypatch, case, message):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf"))
    args = _data_args(tmp_path)
    if case == "missing_files":
        args.train_files = [str(tmp_path / "nowhere" / "*.txt")]
    elif case == "empty_corpus":
        (tmp_path / "empty.txt").write_text("")
        args.train_files = [str(tmp_path / "empty.txt")]
    elif case == "too_few_tokens":
        _write_corpus(tmp_path, ["tiny"] * 20)
        args.block_size = 64
    else:
        (tmp_path / "rows.jsonl").write_text("".join(f'{{"content": "row {i}"}}\n' for i in range(20)))
        args.train_files = [str(tmp_path / "rows.jsonl")]
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        prepare_lm_data(args)


def test_streamed_hub_dataset_holds_out_its_first_shard(tmp_path, monkeypatch):
    """A stream (here a local 4-shard one standing in for the Hub) trains on shards 1-3, evaluates on shard 0."""
    docs = [f"document number {i} says {'spam ' * (i % 7)}\n" for i in range(80)]
    source = Dataset.from_dict({"text": docs})
    from hf_foco.data import corpus

    monkeypatch.setattr(corpus, "load_dataset", lambda **kw: source.to_iterable_dataset(num_shards=4))
    args = _data_args(tmp_path, dataset_name="someone/corpus", train_files=None, streaming=True,
                      streaming_validation_documents=5, tokenizer_train_documents=40, block_size=8)
    data = prepare_lm_data(args)
    tok = data.tokenizer
    val_docs = [tok(d, add_special_tokens=False)["input_ids"] for d in docs[:5]]
    assert ids(data.validation) == packed_reference(val_docs, 8, tok.eos_token_id)
    expected = []
    for shard in (1, 2, 3):
        shard_docs = [tok(d, add_special_tokens=False)["input_ids"] for d in source.shard(4, shard)["text"]]
        expected += packed_reference(shard_docs, 8, tok.eos_token_id)
    assert [row["input_ids"].tolist() for row in data.train] == expected
    assert data.train_tokens is None


def test_an_existing_tokenizer_is_used_as_given(tmp_path, monkeypatch, tokenizer):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf"))
    _write_corpus(tmp_path, [t for t in TEXTS if t])
    tokenizer.save_pretrained(tmp_path / "tok")
    data = prepare_lm_data(_data_args(tmp_path, tokenizer_name=str(tmp_path / "tok"), tokenizer_vocab_size=999))
    assert data.tokenizer.get_vocab() == tokenizer.get_vocab()
    assert not (tmp_path / "cache" / "tokenizers").exists()  # nothing trained
