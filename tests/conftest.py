"""Fixtures shared by the tests: the small corpus of the end-to-end pretraining tests, and a Hub that records
instead of uploading."""

import os
import shutil
from concurrent.futures import Future
from pathlib import Path
from types import SimpleNamespace

import datasets
import pytest
import torch
from helpers import PLACES, REPO
from huggingface_hub import HfApi, constants
from huggingface_hub.hf_api import DEFAULT_IGNORE_PATTERNS
from huggingface_hub.utils import filter_repo_objects

import hf_foco
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


@pytest.fixture
def offline_data(tmp_path, monkeypatch):
    """The datasets cache of in-process script runs under tmp_path; transformers left as found afterwards."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_datasets"))
    originals = [getattr(module, name) for module, name in PLACES]
    yield tmp_path
    hf_foco.uninstall()
    assert [getattr(module, name) for module, name in PLACES] == originals


@pytest.fixture
def hub(monkeypatch):
    """The Hub client with its network calls replaced by recorders: ``repos`` (create_repo), ``commits``
    (repository, sorted uploaded paths), ``uploads`` (each ``upload_folder`` call's patterns) and ``events``, every
    call in order. ``upload_folder`` records the files it would upload, chosen by the Hub library's own filter
    with the call's patterns and its default ignores, as the real one does."""
    calls = SimpleNamespace(repos=[], commits=[], uploads=[], events=[])
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)

    def create_repo(self, repo_id, **kw):
        calls.repos.append((repo_id, kw))
        calls.events.append("create_repo")
        return SimpleNamespace(repo_id=repo_id)

    def commit(repo_id, paths, event):
        calls.commits.append((repo_id, sorted(paths)))
        calls.events.append(event)
        return SimpleNamespace(commit_url=f"https://huggingface.co/{repo_id}/commit/0")

    def create_commit(self, repo_id, operations, **kw):
        return commit(repo_id, [op.path_in_repo for op in operations], "commit")

    def upload_folder(self, *, repo_id, folder_path, allow_patterns=None, ignore_patterns=None, run_as_future=False,
                      **kw):
        calls.uploads.append({"allow_patterns": allow_patterns, "ignore_patterns": ignore_patterns})
        folder = Path(folder_path)
        files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
        ignore = [*([ignore_patterns] if isinstance(ignore_patterns, str) else ignore_patterns or []),
                  *DEFAULT_IGNORE_PATTERNS]
        info = commit(repo_id, filter_repo_objects(files, allow_patterns=allow_patterns, ignore_patterns=ignore),
                      "upload_folder")
        if not run_as_future:
            return info
        future = Future()
        future.set_result(info)
        return future

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "create_commit", create_commit)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    return calls


@pytest.fixture(params=[1, 2], ids=lambda n: f"{n}-thread")
def num_threads(request):
    """The test once with 1 and once with 2 intra-op threads (what OMP_NUM_THREADS sets): fp32 sums are then
    split and ordered differently, so a tolerance that holds for both does not rest on one accumulation order."""
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)
