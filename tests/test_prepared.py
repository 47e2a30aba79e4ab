"""Prepared token shards: the same blocks as the in-memory packing, reuse checked, damage named, and training
from them reads only the blocks its sampler picks (a resume none before its place, two ranks disjoint halves)."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import REPO, short_args
from safetensors.torch import load_file
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

from hf_foco.cli import main as cli_main
from hf_foco.data import (
    DataArguments,
    PrepareArguments,
    PreparedTokens,
    prepare_lm_data,
    prepare_token_shards,
)
from hf_foco.data import prepared as prepared_module
from hf_foco.data.corpus import text_batches
from hf_foco.data.pipeline import load_raw
from hf_foco.models import ModelArguments
from hf_foco.pretrain import main
from hf_foco.trainer.checkpoints import settings_record

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma".split()


def _corpus(root: Path, documents: int = 60) -> Path:
    """``documents`` text files of pseudo-random words (a few hundred tokens each, some empty)."""
    rng = np.random.default_rng(0)
    corpus = root / "corpus"
    corpus.mkdir()
    for i in range(documents):
        words = rng.choice(WORDS, size=int(rng.integers(0, 120))) if i % 13 else []
        (corpus / f"doc{i:03d}.txt").write_text(" ".join(words) + ("\n" if i % 2 else ""))
    return corpus


@pytest.fixture
def source(tmp_path, monkeypatch):
    """Data arguments describing a small local corpus (a trained BPE of 300 tokens), in a private cache."""
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf"))
    corpus = _corpus(tmp_path)
    return dict(train_files=[str(corpus / "*.txt")], sample_by="document", validation_fraction=0.2,
                tokenizer_vocab_size=300, data_cache_dir=str(tmp_path / "cache"))


def _prepare(tmp_path, source, name="prepared", num_proc=1, shard_tokens=500, **overrides):
    args = DataArguments(prepared_data=str(tmp_path / name), **{**source, **overrides})
    return prepare_token_shards(args, PrepareArguments(num_proc=num_proc, shard_tokens=shard_tokens))


def _blocks(dataset) -> list[list[int]]:
    return [np.asarray(dataset[i]["input_ids"]).tolist() for i in range(len(dataset))]


@pytest.mark.parametrize("block_size", [7, 64])
def test_prepared_blocks_equal_the_in_memory_packing(tmp_path, source, block_size):
    index, reused = _prepare(tmp_path, source, num_proc=2)
    assert not reused and index["dtype"] == "uint16"
    assert len(index["splits"]["train"]["shards"]) > 3  # blocks cross shard boundaries
    memory = prepare_lm_data(DataArguments(**source, block_size=block_size))
    prepared = prepare_lm_data(DataArguments(prepared_data=str(tmp_path / "prepared"), block_size=block_size))
    assert prepared.tokenizer.get_vocab() == memory.tokenizer.get_vocab()
    for split in ("train", "validation"):
        assert _blocks(getattr(prepared, split)) == _blocks(getattr(memory, split)), split
    # Every token of every document is there, each document followed by EOS, nothing after the last one.
    tok = memory.tokenizer
    texts = [t for batch in text_batches(load_raw(DataArguments(**source))[0]["train"], "text") for t in batch]
    expected = sum(len(ids) + 1 for ids in tok(texts, add_special_tokens=False)["input_ids"])
    assert index["splits"]["train"]["tokens"] == expected
    assert PreparedTokens(tmp_path / "prepared", "train", 1).tokens(expected - 1, expected).tolist() == [tok.eos_token_id]


def test_a_vocabulary_beyond_uint16_is_stored_as_uint32(tmp_path, source):
    words = [f"w{i}" for i in range(70_000)]
    tok = Tokenizer(models.WordLevel({"<eos>": 0, **{w: i + 1 for i, w in enumerate(words)}}, unk_token="<eos>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    big = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", unk_token="<eos>")
    big.save_pretrained(tmp_path / "big")
    rng = np.random.default_rng(1)
    ids = rng.integers(1, len(words) + 1, size=400)
    (tmp_path / "big.txt").write_text("\n".join(" ".join(words[i - 1] for i in ids[k:k + 20]) for k in range(0, 400, 20)))
    index, _ = _prepare(tmp_path, {**source, "train_files": [str(tmp_path / "big.txt")], "sample_by": "line",
                                   "tokenizer_name": str(tmp_path / "big")})
    assert index["dtype"] == "uint32" and index["tokenizer"]["size"] == 70_001
    data = PreparedTokens(tmp_path / "prepared", "train", 1)
    stream = data.tokens(0, len(data))
    assert stream.max() > 2**16 and set(stream[stream != 0].tolist()) <= set(ids.tolist())


def test_a_prepared_directory_is_reused_only_for_the_same_source_and_tokenizer(tmp_path, source, monkeypatch):
    first, _ = _prepare(tmp_path, source)

    def no_rewrite(*args, **kwargs):
        raise AssertionError("the prepared directory should have been reused")

    monkeypatch.setattr("hf_foco.data.pipeline.write_prepared", no_rewrite)
    again, reused = _prepare(tmp_path, source)
    assert reused and again == first
    with pytest.raises(ValueError, match="prepared with another tokenizer .* remove .*prepared to prepare it again"):
        _prepare(tmp_path, source, tokenizer_vocab_size=280)
    edited = Path(source["train_files"][0]).parent / "doc001.txt"
    edited.write_text(edited.read_text() + " omega")
    with pytest.raises(ValueError, match="prepared from other data"):
        _prepare(tmp_path, source)


def test_an_interrupted_preparation_leaves_no_directory_and_resumes_with_its_tokenization(tmp_path, source,
                                                                                         monkeypatch):
    finish = prepared_module._ShardWriter.finish

    def killed(self):  # the last thing a preparation does: after both splits are tokenized
        if self.split == "validation":
            raise RuntimeError("killed while writing")
        return finish(self)

    def no_tokenizing(*args, **kwargs):
        raise AssertionError("the cached tokenization should have been reused")

    with monkeypatch.context() as patch:
        patch.setattr(prepared_module._ShardWriter, "finish", killed)
        with pytest.raises(RuntimeError, match="killed"):
            _prepare(tmp_path, source)
    assert not (tmp_path / "prepared").exists() and list((tmp_path / "prepared.partial").glob(".tokenized-*"))
    with monkeypatch.context() as patch:
        patch.setattr(prepared_module, "_tokenize", no_tokenizing)
        resumed, _ = _prepare(tmp_path, source)
    assert not (tmp_path / "prepared.partial").exists() and not list((tmp_path / "prepared").glob(".tokenized-*"))
    assert resumed == _prepare(tmp_path, source, name="fresh")[0]


def _damage(path: Path, truncate: bool) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:-6] if truncate else data[:10] + b"\xff" * 6 + data[16:])


@pytest.mark.parametrize("truncate", [True, False], ids=["truncated", "corrupt"])
def test_a_damaged_shard_is_an_error_naming_the_file(tmp_path, source, truncate):
    _prepare(tmp_path, source)
    shard = tmp_path / "prepared" / "train-00001.bin"
    _damage(shard, truncate)
    args = DataArguments(prepared_data=str(tmp_path / "prepared"), block_size=8)
    if truncate:  # found when the data is opened
        message = f"{shard} is truncated: 994 bytes where index.json records 500 tokens (1,000 bytes)"
        with pytest.raises(ValueError, match=re.escape(message)):
            prepare_lm_data(args)
    else:  # found when a block of it is read (0xffff is outside the vocabulary)
        data = prepare_lm_data(args)
        data.train[62]  # tokens 496-503: shard 0's last 4 and shard 1's first 4, intact
        message = f"{shard} is corrupt: its token 5 is id 65535, outside the tokenizer's 300 ids"
        with pytest.raises(ValueError, match=re.escape(message)):
            data.train[63]  # shard 1's tokens 4-11
    # Either way, prepare-data's check of the directory names it (by size, or by checksum).
    with pytest.raises(ValueError, match=re.escape(f"{shard} is {'truncated' if truncate else 'corrupt: its SHA-256'}")):
        _prepare(tmp_path, source)


def test_bad_prepared_data_fails_with_one_line_naming_the_fix(tmp_path, source, capsys):
    missing = tmp_path / "nowhere"
    with pytest.raises(ValueError, match=f"{re.escape(str(missing))} is not a prepared directory .* `hf-foco prepare-data"):
        prepare_lm_data(DataArguments(prepared_data=str(missing)))
    _prepare(tmp_path, source)
    with pytest.raises(ValueError, match="names its own source and tokenizer: drop --train_files"):
        prepare_lm_data(DataArguments(prepared_data=str(tmp_path / "prepared"), train_files=source["train_files"]))
    with pytest.raises(SystemExit, match="hf-foco prepare-data: error: .*drop --streaming"):
        cli_main(["prepare-data", "--prepared_data", str(tmp_path / "x"), "--dataset_name", "a/b", "--streaming", "true",
                  "--tokenizer_train_documents", "10"])


def test_a_run_records_which_preparation_it_trains_on(tmp_path, source):
    """A resume is checked against the recorded settings: the same directory prepared again from other data
    records another fingerprint, so the resume is refused instead of mixing the two."""
    _prepare(tmp_path, source)
    args = DataArguments(prepared_data=str(tmp_path / "prepared"))
    before = settings_record(ModelArguments(), args)["data"]["prepared_data_fingerprint"]
    assert settings_record(ModelArguments(), args)["data"]["prepared_data_fingerprint"] == before
    shutil.rmtree(tmp_path / "prepared")
    _prepare(tmp_path, source, tokenizer_vocab_size=280)
    assert settings_record(ModelArguments(), args)["data"]["prepared_data_fingerprint"] != before


# -- training from prepared data ---------------------------------------------------------------------------

BATCH = 4


def _block_size(prepared: Path, multiple: int) -> int:
    """A block size of at most the nano model's 256 positions that cuts the training tokens into a multiple of
    ``multiple`` blocks (at least 16), so that every batch of an epoch is full and epochs compare exactly."""
    tokens = json.loads((prepared / "index.json").read_text())["splits"]["train"]["tokens"]
    return next(b for b in range(256, 64, -1) if (tokens // b) % multiple == 0 and tokens // b >= 16)


def _train_args(out, prepared, block_size, max_steps, save_steps, *extra):
    return [str(REPO / "recipes" / "gpt2-nano" / "foco.yaml"), *short_args(out, ["--prepared_data", str(prepared)]),
            "--config_overrides", "n_layer=1,n_embd=32,n_head=2", "--block_size", str(block_size),
            "--max_eval_blocks", "4", "--disable_tqdm", "true", "--save_strategy", "steps", "--save_steps",
            str(save_steps), "--max_steps", str(max_steps), "--per_device_train_batch_size", str(BATCH), *extra]


def _resume_copy(run: Path, step: int, into: Path) -> Path:
    """A fresh output directory holding only ``run``'s checkpoint-``step``: rerunning the command resumes it."""
    into.mkdir()
    shutil.copytree(run / f"checkpoint-{step}", into / f"checkpoint-{step}")
    return into


def _same_weights(a: Path, b: Path) -> bool:
    first, second = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    return first.keys() == second.keys() and all((first[k] == v).all() for k, v in second.items())


@pytest.mark.slow
def test_training_reads_each_epoch_in_a_seeded_order_and_resumes_without_reading_earlier_blocks(
        tmp_path, source, monkeypatch):
    """One process, an epoch and two steps, a checkpoint every step. Reads are logged at the dataset: runs
    resumed mid first and mid second epoch read exactly the uninterrupted run's blocks after their checkpoint
    (none before) and end with its weights."""
    _prepare(tmp_path, source)
    prepared = tmp_path / "prepared"
    block_size = _block_size(prepared, 2 * BATCH)
    blocks = len(PreparedTokens(prepared, "train", block_size))
    steps = blocks // BATCH  # per epoch
    reads = []
    original = PreparedTokens.__getitem__

    def counting(self, i):
        if self.split == "train":
            reads.append(i)
        return original(self, i)

    monkeypatch.setattr(PreparedTokens, "__getitem__", counting)
    # The vocabulary padded too: the saved model has 320 rows for 300 tokens and never generates the extra 20.
    pad = ["--pad_vocab_size_to_multiple_of", "64"]
    run = tmp_path / "run"
    assert main(_train_args(run, prepared, block_size, steps + 2, 1, *pad)) == 0
    full = list(reads)
    assert len(full) == (steps + 3) * BATCH  # the steps' batches, and the one accelerate's loader reads ahead
    assert sorted(full[:blocks]) == list(range(blocks))  # an epoch: every block once
    assert full[blocks:] != full[:2 * BATCH]  # the next epoch is another order
    for step in (2, steps + 1):  # mid first epoch, mid second epoch
        reads.clear()
        resumed = _resume_copy(run, step, tmp_path / f"resumed{step}")
        assert main(_train_args(resumed, prepared, block_size, steps + 2, 1, *pad)) == 0
        assert reads == full[step * BATCH:], step  # exactly what the uninterrupted run read after that step
        assert _same_weights(resumed, run), step
    model, tokenizer = AutoModelForCausalLM.from_pretrained(run), AutoTokenizer.from_pretrained(run)
    assert (model.config.vocab_size, len(tokenizer)) == (320, 300)
    assert json.loads((run / "generation_config.json").read_text())["suppress_tokens"] == list(range(300, 320))


DUMP_READS = """
import json, os, sys
from hf_foco.data import PreparedTokens
from hf_foco.pretrain import main
reads, original = [], PreparedTokens.__getitem__
def counting(self, i):
    if self.split == "train":
        reads.append(i)
    return original(self, i)
PreparedTokens.__getitem__ = counting
code = main(sys.argv[2:])
open(os.path.join(sys.argv[1], "reads%s.json" % os.environ.get("RANK", "0")), "w").write(json.dumps(reads))
sys.exit(code)
"""


@pytest.mark.slow
def test_two_gloo_ranks_read_disjoint_halves_of_the_epoch_and_resume_exactly(tmp_path, source):
    """2-process gloo DDP over exactly one epoch with a checkpoint in its middle, then the rerun resuming
    from there: each rank reads its own half, and after the resume exactly what it read before."""
    _prepare(tmp_path, source)
    prepared = tmp_path / "prepared"
    block_size = _block_size(prepared, 4 * BATCH)
    steps = len(PreparedTokens(prepared, "train", block_size)) // (2 * BATCH)
    wrapper = tmp_path / "dump_reads.py"
    wrapper.write_text(DUMP_READS)
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
              str(REPO / "recipes" / "accelerate_configs" / "cpu_ddp.yaml"), str(wrapper)]
    middle = steps // 2

    def run(out):
        out.mkdir(exist_ok=True)
        proc = subprocess.run([*launch, str(out), *_train_args(out, prepared, block_size, steps, middle)],
                              env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)},
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
        return [json.loads((out / f"reads{rank}.json").read_text()) for rank in (0, 1)]

    full = run(tmp_path / "run")
    assert not set(full[0]) & set(full[1])
    assert sorted(full[0] + full[1]) == list(range(steps * 2 * BATCH))  # the epoch, each block once
    resumed = run(_resume_copy(tmp_path / "run", middle, tmp_path / "resumed"))
    assert resumed == [reads[middle * BATCH:] for reads in full]
    assert _same_weights(tmp_path / "resumed", tmp_path / "run")
