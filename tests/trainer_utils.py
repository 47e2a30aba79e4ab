"""Tiny GPT-2 and a tiny text corpus for the Trainer-integration tests (no downloads)."""

from __future__ import annotations

import random

import torch
from datasets import Dataset
from transformers import GPT2Config, GPT2LMHeadModel

SEQ = 16
WORDS = "the cat sat on a mat and the dog ran to the red ball while birds sang in old trees".split()


def tiny_gpt2(seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    config = GPT2Config(n_layer=2, n_embd=32, n_head=2, n_positions=SEQ, vocab_size=128, resid_pdrop=0.1,
                        embd_pdrop=0.1, attn_pdrop=0.1)
    return GPT2LMHeadModel(config)


def sentences(count: int = 400, seed: int = 0) -> list[str]:
    """Random sentences of 4 to 9 words from WORDS, each ending with a period."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 9))) + "." for _ in range(count)]


def text_dataset(samples: int = 64, seed: int = 0) -> Dataset:
    """Byte-level token blocks of SEQ tokens from random sentences over a small vocabulary of words."""
    ids = [b % 128 for b in " ".join(sentences(400, seed)).encode()]
    blocks = [ids[i:i + SEQ] for i in range(0, samples * SEQ, SEQ)]
    return Dataset.from_dict({"input_ids": blocks, "labels": blocks})


def common_args(output_dir, **overrides) -> dict:
    """Small, deterministic, CPU-only settings."""
    return {"output_dir": str(output_dir), "per_device_train_batch_size": 8, "report_to": "none",
            "use_cpu": True, "disable_tqdm": True, "seed": 0, "logging_steps": 1, "save_strategy": "no",
            "dataloader_num_workers": 0, **overrides}
