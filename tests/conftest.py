"""Fixtures shared by the end-to-end pretraining tests."""

import os
import shutil

import pytest
from helpers import REPO

from hf_foco.data import DataArguments, prepare_lm_data, stdlib_files
from hf_foco.data.corpus import stdlib_root


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A small corpus (30 stdlib modules) with its tokenizer and blocks already cached, and the env to use it."""
    root = tmp_path_factory.mktemp("pretrain")
    corpus = root / "corpus"
    corpus.mkdir()
    for rel in [f for f in stdlib_files() if f.count("/") == 0][:30]:
        shutil.copy(stdlib_root() / rel, corpus / rel)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": str(root / "hf"), "OMP_NUM_THREADS": "1",
           "HF_FOCO_CACHE": str(root / "cache"), "PYTHONPATH": str(REPO)}
    data_keys = ["--train_files", str(corpus / "*.py"), "--sample_by", "document", "--tokenizer_vocab_size", "512",
                 "--max_eval_blocks", "8", "--validation_fraction", "0.2"]
    old = os.environ.copy()
    os.environ.update(env)
    try:
        data_args = DataArguments(train_files=[str(corpus / "*.py")], sample_by="document", tokenizer_vocab_size=512,
                                  max_eval_blocks=8, block_size=128, validation_fraction=0.2)
        prepare_lm_data(data_args)  # warm the cache, so parallel runs do not all pack
        yield {"root": root, "env": env, "data_keys": data_keys, "data_args": data_args}
    finally:
        os.environ.clear()
        os.environ.update(old)
