"""What the tests share: one tiny GPT-2, tiny datasets, Trainer settings, small K-FAC test models, the paths
and short-run arguments of the end-to-end tests (their corpus fixture is in conftest.py)."""

from __future__ import annotations

import os
import random
import re
import runpy
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
import transformers
import transformers.trainer
import transformers.training_args
from datasets import Dataset
from tokenizers import Tokenizer, models, pre_tokenizers
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

REPO = Path(__file__).resolve().parent.parent
# Where hf_foco.install() puts its classes.
PLACES = [(transformers, "Trainer"), (transformers, "TrainingArguments"), (transformers.trainer, "Trainer"),
          (transformers.training_args, "TrainingArguments")]
SCRIPT = REPO / "scripts" / "run_pretrain.py"
# Stock Trainer scripts (causal LM, sequence and token classification with transformers only; SFT with TRL),
# run unmodified
STOCK_CLM, STOCK_GLUE, STOCK_NER, STOCK_SFT = (REPO / "tests" / "scripts" / f"stock_{task}.py"
                                               for task in ("clm", "glue", "ner", "sft"))
SEQ = 16
VOCAB = 128
WORDS = "the cat sat on a mat and the dog ran to the red ball while birds sang in old trees".split()


def tiny_gpt2(seed: int = 0, **overrides) -> GPT2LMHeadModel:
    """2 layers of width 32, 16 positions, 128 tokens, no dropout (so runs are deterministic functions of the
    data and the optimizer, and data-parallel ranks draw no masks of their own)."""
    torch.manual_seed(seed)
    config = GPT2Config(**{**dict(n_layer=2, n_embd=32, n_head=2, n_positions=SEQ, vocab_size=VOCAB, bos_token_id=0,
                                  eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0), **overrides})
    return GPT2LMHeadModel(config)


def sentences(count: int = 400, seed: int = 0) -> list[str]:
    """Random sentences of 4 to 9 words from WORDS, each ending with a period."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 9))) + "." for _ in range(count)]


def text_dataset(samples: int = 64, seed: int = 0) -> Dataset:
    """Byte-level token blocks of SEQ tokens from random sentences over a small vocabulary of words."""
    ids = [b % VOCAB for b in " ".join(sentences(400, seed)).encode()]
    blocks = [ids[i:i + SEQ] for i in range(0, samples * SEQ, SEQ)]
    return Dataset.from_dict({"input_ids": blocks, "labels": blocks})


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer over WORDS (plus <unk> and <pad>): 23 tokens (tests/scripts/data/tokenizer is
    this one, saved)."""
    vocab = {w: i for i, w in enumerate(["<unk>", "<pad>", *dict.fromkeys(WORDS)])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>")


def stock_clm_args(out: Path, optim: str, *extra: str) -> list[str]:
    """Arguments of a tests/scripts/stock_*.py script for a 6-step run on its own data, logging every step."""
    return ["--do_train", "--do_eval", "--output_dir", str(out), "--optim", optim, "--max_steps", "6",
            "--per_device_train_batch_size", "4", "--max_eval_samples", "8", "--logging_steps", "1",
            "--save_strategy", "no", "--use_cpu", "--seed", "0", "--disable_tqdm", "true", *extra]


def run_stock(script: Path, args: list[str], install: bool) -> None:
    """Run a stock script in this process: through `hf-foco run`, or as `python SCRIPT.py` would."""
    if install:
        from hf_foco.cli import main

        assert main(["run", str(script), *args]) == 0
        return
    saved = sys.argv
    sys.argv = [str(script), *args]
    try:
        runpy.run_path(str(script), run_name="__main__")
    finally:
        sys.argv = saved


def readme_blocks(section: str, language: str) -> list[str]:
    """The ```language code blocks of the README section titled ``section`` (up to the next ``## `` title), in
    order: the tests run what the README shows."""
    text = (REPO / "README.md").read_text()
    start = text.index(f"\n## {section}\n")
    end = text.find("\n## ", start + 1)
    return re.findall(rf"```{language}\n(.*?)```", text[start:end if end > 0 else None], flags=re.S)


def token_batches(count: int, seed: int = 0, rows: int = 4, length: int = 8) -> list[dict[str, torch.Tensor]]:
    """``count`` batches of random token ids (inputs and labels) for loops without a Trainer."""
    generator = torch.Generator().manual_seed(seed)
    ids = [torch.randint(0, 32, (rows, length), generator=generator) for _ in range(count)]
    return [{"input_ids": i, "labels": i} for i in ids]


def common_args(output_dir, **overrides) -> dict:
    """Small, deterministic, CPU-only Trainer settings."""
    return {"output_dir": str(output_dir), "per_device_train_batch_size": 8, "report_to": "none",
            "use_cpu": True, "disable_tqdm": True, "seed": 0, "logging_steps": 1, "save_strategy": "no",
            "dataloader_num_workers": 0, **overrides}


def short_args(out: Path, data_keys: list[str]) -> list[str]:
    """A 2-step pretraining run on the ``workspace`` corpus writing to ``out`` (later keys win)."""
    return ["--output_dir", str(out), "--max_steps", "2", "--per_device_train_batch_size", "4",
            "--per_device_eval_batch_size", "8", "--logging_steps", "1", *data_keys]


class Classifier(nn.Module):
    """x -> layer1 -> tanh -> layer2 -> logits; ``make_layer(in, out)`` picks Linear or Conv1D."""

    def __init__(self, make_layer, sizes=(5, 7, 4)):
        super().__init__()
        self.layer1 = make_layer(sizes[0], sizes[1])
        self.layer2 = make_layer(sizes[1], sizes[2])

    def forward(self, x, labels=None):
        logits = self.layer2(torch.tanh(self.layer1(x)))
        loss = None if labels is None else F.cross_entropy(logits, labels)
        return SimpleNamespace(logits=logits, loss=loss)


def half_batch_difference(model: nn.Module, params: list, inputs: dict) -> list[torch.Tensor]:
    """g1 − g2 of ``params``: the mean-loss gradients of the two halves of ``inputs``, by autograd (what
    FocoTrainer's half-batch step hands a half-batch optimizer)."""
    n = next(v.shape[0] for v in inputs.values() if isinstance(v, torch.Tensor))
    halves = [{k: v[part] for k, v in inputs.items()} for part in (slice(0, n // 2), slice(n // 2, n))]
    g1, g2 = (torch.autograd.grad(model(**half).loss, params) for half in halves)
    return [a - b for a, b in zip(g1, g2)]


def kronecker_step(optimizer, model: nn.Module, batch: dict) -> None:
    """One step of a K-FAC optimizer the way FocoTrainer drives it, in a plain loop: curvature when due,
    the gradient, g1 − g2 for a half-batch optimizer, then ``step()``."""
    if optimizer.curvature_due:
        optimizer.update_curvature(batch)
    model.zero_grad()
    model(**batch).loss.backward()
    if hasattr(optimizer, "receive_half_batch_difference"):
        optimizer.receive_half_batch_difference(half_batch_difference(model, optimizer.half_batch_params, batch))
    optimizer.step()


@contextmanager
def unwritable(path: Path) -> Iterator[None]:
    """``path`` (a file or directory) made unwritable for this process, and back: immutable (``chattr +i``) for
    root, whom file permissions do not stop; read-only for anyone else. Skips the test where neither works."""
    if os.geteuid() == 0:
        if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode != 0:
            pytest.skip("chattr +i (to make a path unwritable for root) does not work here")
        undo = ["chattr", "-i", str(path)]
    else:
        mode = path.stat().st_mode
        path.chmod(mode & ~0o222)
        undo = None
    try:
        yield
    finally:
        if undo:
            subprocess.run(undo, check=True)
        else:
            path.chmod(mode)
