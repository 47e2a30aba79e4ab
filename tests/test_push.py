"""Run artifacts and the push: exactly the model's files go up, the card describes the pretraining run,
and offline the push fails clearly without touching the run."""

import hashlib
import json
import math
from types import SimpleNamespace

import matplotlib.image
import pytest
import torch
from helpers import WORDS, common_args, text_dataset, tiny_gpt2
from huggingface_hub import HfApi, constants
from huggingface_hub.errors import OfflineModeIsEnabled
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from hf_foco.artifacts.push import PushError, push_run
from hf_foco.cli import main as cli_main
from hf_foco.trainer import FocoTrainer, FocoTrainingArguments, write_run_artifacts

torch.set_num_threads(1)
REPO = "someone/tiny-foco"
UPLOADED = {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
            "training_args.json", "stability.json", "loss_curve.png", "README.md"}
DATASET = {"name": "tiny-sentences", "sequence_length": 16}


def tiny_tokenizer():
    vocab = {w: i for i, w in enumerate(["<unk>", "<pad>", *dict.fromkeys(WORDS)])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>")


def finished_run(out, **overrides):
    settings = {"optim": "foco", "learning_rate": 3e-3, "max_steps": 4, "eval_strategy": "steps", "eval_steps": 2,
                "save_strategy": "steps", "save_steps": 2, **overrides}
    args = FocoTrainingArguments(**common_args(out, **settings))
    trainer = FocoTrainer(model=tiny_gpt2(), args=args, train_dataset=text_dataset(32),
                          eval_dataset=text_dataset(8, seed=1), processing_class=tiny_tokenizer())
    trainer.train()
    trainer.save_model()
    return trainer


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    trainer = finished_run(out)
    write_run_artifacts(trainer, dataset_info=DATASET)
    return out, trainer.state


@pytest.fixture
def hub(monkeypatch):
    """HfApi with its two network calls replaced by recorders."""
    calls = SimpleNamespace(repos=[], commits=[])
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: calls.repos.append((repo_id, kw)))

    def create_commit(self, repo_id, operations, **kw):
        calls.commits.append((repo_id, sorted(op.path_in_repo for op in operations)))
        return SimpleNamespace(commit_url=f"https://huggingface.co/{repo_id}/commit/0")

    monkeypatch.setattr(HfApi, "create_commit", create_commit)
    return calls


def test_push_uploads_exactly_the_model_files(run_dir, hub):
    out, _ = run_dir
    assert (out / "checkpoint-2").is_dir() and (out / "trainer_state.json").is_file()  # present, not uploaded
    push_run(out, REPO)
    assert hub.repos == [(REPO, {"private": None, "exist_ok": True, "repo_type": "model"})]
    assert hub.commits == [(REPO, sorted(UPLOADED))]
    assert cli_main(["push", str(out), "--repo-id", REPO, "--private"]) == 0
    assert hub.repos[-1][1]["private"] is True and hub.commits[-1] == (REPO, sorted(UPLOADED))


def test_model_card_describes_the_pretraining_run(run_dir):
    out, state = run_dir
    card = (out / "README.md").read_text()
    evals = [e for e in state.log_history if "eval_loss" in e]
    tokens = 4 * 8 * 16  # steps x batch x sequence length
    for text in ("`foco`", "| `gamma` | 0.2 |", "| `lr` | 0.003 |", "| `betas` | (0.9, 0.99) |",
                 "Steps: 4;", f"Tokens seen: {tokens}", "- name: tiny-sentences", "- sequence length: 16",
                 "on CPU", "Wall time: 0 min", f"Final eval loss: {evals[-1]['eval_loss']:.4g}",
                 f"Final eval perplexity: {math.exp(evals[-1]['eval_loss']):.4g}", "![Loss curve](loss_curve.png)",
                 "0 skipped non-finite steps", "## Limitations", "library_name: transformers",
                 f'AutoModelForCausalLM.from_pretrained("{REPO}")'):
        assert text in card, text
    assert "fine-tuned" not in card.lower()
    assert state.num_input_tokens_seen == tokens
    image = matplotlib.image.imread(out / "loss_curve.png")
    assert image.shape[0] > 100 and image.shape[1] > 100
    stability = json.loads((out / "stability.json").read_text())
    assert stability["num_skipped_steps"] == 0 and stability["status"] == "ok"


def _snapshot(folder):
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_offline_push_fails_clearly_and_leaves_the_run_untouched(run_dir, monkeypatch, capsys):
    out, _ = run_dir
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    before = _snapshot(out)
    with pytest.raises(PushError, match="HF_HUB_OFFLINE=1 forbids network access. The local run is unchanged"):
        push_run(out, REPO)
    assert cli_main(["push", str(out), "--repo-id", REPO]) == 1
    assert f"hf-foco push {out} --repo-id {REPO}" in capsys.readouterr().err
    # the hub library's own offline refusal is turned into the same message
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)

    def refuse(self, *a, **kw):
        raise OfflineModeIsEnabled("offline")

    monkeypatch.setattr(HfApi, "create_repo", refuse)
    with pytest.raises(PushError, match="HF_HUB_OFFLINE=1"):
        push_run(out, REPO, write_artifacts=False)
    assert _snapshot(out) == before


def test_push_refuses_a_directory_without_a_saved_model(tmp_path, hub):
    with pytest.raises(PushError, match="no saved model"):
        push_run(tmp_path, REPO)
    assert hub.repos == []


def test_trainer_push_to_hub_uploads_the_same_files_with_the_pretraining_card(tmp_path, hub):
    trainer = finished_run(tmp_path, hub_model_id=REPO, eval_steps=4, save_strategy="no")
    trainer.push_to_hub(dataset_info=DATASET)
    assert hub.commits == [(REPO, sorted(UPLOADED))]
    card = (tmp_path / "README.md").read_text()
    assert f'from_pretrained("{REPO}")' in card and "fine-tuned" not in card.lower()
