"""Run artifacts and the push: exactly the model's files go up, the card describes the pretraining run and
honours transformers' card arguments, and offline the push fails clearly without touching the run."""

import hashlib
import json
import math
import shutil
from pathlib import Path

import matplotlib.image
import pytest
import torch
from helpers import common_args, text_dataset, tiny_gpt2, tiny_tokenizer
from huggingface_hub import HfApi, ModelCard, ModelCardData, constants
from huggingface_hub.errors import OfflineModeIsEnabled
from huggingface_hub.repocard_data import model_index_to_eval_results
from huggingface_hub.utils import validate_repo_id
from transformers import TrainerCallback

from hf_foco.artifacts import render_run
from hf_foco.artifacts.push import PushError, push_run
from hf_foco.cli import main as cli_main
from hf_foco.trainer import FocoTrainer, FocoTrainingArguments, write_run_artifacts

torch.set_num_threads(1)
REPO = "someone/tiny-foco"
UPLOADED = {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
            "training_args.json", "stability.json", "loss_curve.png", "README.md", "trainer_state.json",
            "eval_results.json", "all_results.json"}
DATASET = {"name": "tiny-sentences", "sequence_length": 16}


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
    trainer = finished_run(out, report_to="tensorboard")
    trainer.save_metrics("eval", trainer.evaluate())  # eval_results.json and all_results.json, as run_clm.py does
    write_run_artifacts(trainer, dataset_info=DATASET)
    return out, trainer.state


def test_push_uploads_exactly_the_model_files_and_the_tensorboard_logs(run_dir, hub):
    out, _ = run_dir
    assert (out / "checkpoint-2" / "optimizer.pt").is_file() and (out / "training_args.bin").is_file()  # not uploaded
    events = [p.relative_to(out).as_posix() for p in out.glob("runs/*/events.out.tfevents.*")]
    assert events  # --report_to tensorboard wrote them under runs/
    push_run(out, REPO)
    assert hub.repos == [(REPO, {"private": None, "exist_ok": True, "repo_type": "model"})]
    assert hub.commits == [(REPO, sorted([*UPLOADED, *events]))]  # the Hub's "Training metrics" read the events
    assert cli_main(["push", str(out), "--repo_id", REPO, "--private"]) == 0
    assert hub.repos[-1][1]["private"] is True and hub.commits[-1] == (REPO, sorted([*UPLOADED, *events]))


def test_model_card_describes_the_pretraining_run(run_dir):
    out, state = run_dir
    card = (out / "README.md").read_text()
    evals = [e for e in state.log_history if "eval_loss" in e]
    tokens = 4 * 8 * 16  # steps x batch x sequence length
    seconds = round(next(e["train_runtime"] for e in reversed(state.log_history) if "train_runtime" in e))
    for text in ("`foco`", "| `gamma` | 0.2 |", "| `lr` | 0.003 |", "| `betas` | (0.9, 0.99) |",
                 "Steps: 4;", f"Tokens seen: {tokens}", "- name: tiny-sentences", "- sequence length: 16",
                 "on CPU", f"Wall time: {seconds // 60} min {seconds % 60} s", f"Final eval loss: {evals[-1]['eval_loss']:.4g}",
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


def test_a_run_that_did_not_count_tokens_reports_steps_times_batch(run_dir, tmp_path):
    out, state = run_dir
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    saved = json.loads((copy / "trainer_state.json").read_text())
    (copy / "trainer_state.json").write_text(json.dumps({**saved, "num_input_tokens_seen": 0}))  # counting off
    render_run(copy)
    card = (copy / "README.md").read_text()
    assert f"Tokens seen: {state.num_input_tokens_seen} (steps x global batch x sequence length)" in card


def _snapshot(folder):
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_offline_push_fails_clearly_and_leaves_the_run_untouched(run_dir, monkeypatch, capsys):
    out, _ = run_dir
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    before = _snapshot(out)
    with pytest.raises(PushError, match="HF_HUB_OFFLINE=1 forbids network access. The local run is unchanged"):
        push_run(out, REPO)
    assert cli_main(["push", str(out), "--repo_id", REPO]) == 1
    assert f"hf-foco push {out} --repo_id {REPO}" in capsys.readouterr().err
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


class InFlightUpload:
    """A checkpoint upload still running when the final push starts (what ``--hub_strategy every_save`` leaves)."""

    def __init__(self, events):
        self.events = events

    def is_done(self):
        return False

    def wait_until_done(self):
        self.events.append("waited")


class PushBegins(TrainerCallback):
    def __init__(self):
        self.calls = 0

    def on_push_begin(self, args, state, control, **kwargs):
        self.calls += 1


def test_trainer_push_to_hub_waits_for_uploads_in_flight_and_uploads_the_stock_result_files(tmp_path, hub):
    trainer = finished_run(tmp_path, hub_model_id=REPO, push_to_hub=True, eval_steps=4, save_strategy="no")
    # --push_to_hub: transformers created the repository when the Trainer was built, and save_model pushed
    assert hub.events == ["create_repo", "upload_folder"]
    trainer.save_metrics("eval", trainer.evaluate())
    trainer.push_in_progress = InFlightUpload(hub.events)
    trainer.add_callback(begins := PushBegins())
    hub.commits.clear()
    trainer.push_to_hub(dataset_info=DATASET)
    assert hub.events[2:] == ["waited", "upload_folder"]
    assert hub.commits == [(REPO, sorted(UPLOADED))] and begins.calls == 1
    card = ModelCard.load(tmp_path / "README.md")
    assert f'from_pretrained("{REPO}")' in card.text and "fine-tuned" not in card.text.lower()
    assert card.text.startswith("\n# tiny-foco\n")  # model_name defaults to the repository's name, as transformers'


def test_push_without_a_repository_name_uses_the_output_folder_like_transformers(tmp_path, hub):
    trainer = finished_run(tmp_path / "my-run", save_strategy="no", eval_steps=4)
    trainer.push_to_hub()
    assert hub.repos[0][0] == "my-run" and hub.commits[0][0] == "my-run"


def assert_hub_valid(card: ModelCard) -> list:
    """The card's metadata as the Hub library reads it: it rebuilds into the same ``ModelCardData``, every
    ``datasets`` entry is a Hub id, and the model-index parses into complete results (returned)."""
    meta = card.data.to_dict()
    assert ModelCardData(**meta).to_dict() == meta
    for dataset in meta.get("datasets") or []:
        validate_repo_id(dataset)
    if "model-index" not in meta:
        return []
    name, results = model_index_to_eval_results(meta["model-index"])
    assert name and all(r.task_type and r.dataset_type and r.dataset_name and r.metric_type for r in results)
    return results


def card_of(trainer, **kwargs) -> ModelCard:
    trainer.create_model_card(**kwargs)
    card = ModelCard.load(Path(trainer.args.output_dir) / "README.md")
    assert_hub_valid(card)
    return card


def test_card_takes_transformers_create_model_card_arguments(tmp_path):
    trainer = finished_run(tmp_path, eval_steps=4, save_strategy="no")
    card = card_of(trainer, language="en", license="apache-2.0", tags=["tiny"], model_name="tiny-stories-foco",
                   finetuned_from="openai-community/gpt2", tasks="text-generation",
                   dataset_tags="roneneldan/TinyStories", dataset="TinyStories", dataset_args="default")
    meta = card.data.to_dict()
    assert (meta["language"], meta["license"], meta["base_model"]) == (["en"], "apache-2.0", "openai-community/gpt2")
    assert {"tiny", "generated_from_trainer", "hf-foco", "optimizer-foco"} <= set(meta["tags"])
    assert meta["datasets"] == ["roneneldan/TinyStories"] and meta["pipeline_tag"] == "text-generation"
    (index,) = meta["model-index"]
    assert index["name"] == "tiny-stories-foco"
    result = index["results"][0]
    assert result["task"]["type"] == "text-generation"
    assert result["dataset"] == {"name": "TinyStories", "type": "roneneldan/TinyStories", "config": "default"}
    assert {m["type"] for m in result["metrics"]} == {"loss", "perplexity", "accuracy"}
    assert card.text.startswith("\n# tiny-stories-foco\n")
    assert "trained from the weights of [openai-community/gpt2](https://huggingface.co/openai-community/gpt2)" in \
        card.text
    assert "random initialisation" not in card.text and "- name: TinyStories" in card.text
    # the card metadata is part of the run record: `hf-foco push` later renders the same card
    assert json.loads((tmp_path / "run_info.json").read_text())["card"]["finetuned_from"] == "openai-community/gpt2"


def test_where_the_weights_started_is_inferred_as_transformers_does(tmp_path):
    trainer = finished_run(tmp_path, eval_steps=4, save_strategy="no")
    assert "pretrained from random initialisation" in card_of(trainer).text  # a config-built model
    trainer.model.config._name_or_path = "someone/base-model"  # as from_pretrained("someone/base-model") leaves it
    card = card_of(trainer)
    assert card.data.base_model == "someone/base-model" and "random initialisation" not in card.text
    # explicitly None, as run_clm.py passes for a model built from a config: from scratch
    assert "pretrained from random initialisation" in card_of(trainer, finetuned_from=None).text
    # a local folder is named in the text, not as the Hub's base_model
    card = card_of(trainer, finetuned_from=str(tmp_path))
    assert card.data.base_model is None and f"trained from the weights of `{tmp_path}`" in card.text


def test_final_training_loss_is_the_last_logged_loss_and_the_mean_is_labelled(tmp_path):
    trainer = finished_run(tmp_path, eval_steps=4, save_strategy="no")
    text = card_of(trainer).text
    losses = [e for e in trainer.state.log_history if "loss" in e]
    mean = next(e["train_loss"] for e in trainer.state.log_history if "train_loss" in e)
    assert losses[-1]["loss"] != pytest.approx(mean)
    assert f"- Final training loss: {losses[-1]['loss']:.4g} (the last logged loss, step 4)" in text
    assert f"- Mean training loss over the run: {mean:.4g}" in text


def test_a_native_optimizer_card_does_not_claim_hf_foco(tmp_path):
    text = card_of(finished_run(tmp_path, optim="adamw_torch", eval_steps=4, save_strategy="no")).content
    assert "transformers' built-in **adamw_torch** optimizer" in text and "| `betas` | (0.9, 0.999) |" in text
    assert "hf_foco" not in text and "hf-foco" not in text


def test_stability_summary_says_null_for_what_was_never_measured(tmp_path):
    trainer = finished_run(tmp_path, logging_steps=100, eval_strategy="no", save_strategy="no")
    write_run_artifacts(trainer)
    raw = (tmp_path / "stability.json").read_text()
    summary = json.loads(raw)
    assert summary["max_grad_norm"] is None and summary["last_update_ratio"] is None
    assert '"max_grad_norm": null' in raw and "0.0" not in raw


def test_data_without_a_hub_id_is_named_in_the_text_and_the_model_index_not_in_datasets(tmp_path):
    """The built-in corpus has no Hub id: the card's ``datasets`` stays empty, the Data section and the
    model-index (evaluated, so present) name it; the license comes from --license unless the call gives one."""
    trainer = finished_run(tmp_path, eval_steps=4, save_strategy="no", license="apache-2.0")
    corpus = "the Python standard library (built-in)"
    write_run_artifacts(trainer, dataset_info={"name": corpus})
    card = ModelCard.load(tmp_path / "README.md")
    results = assert_hub_valid(card)
    assert card.data.datasets is None and card.data.license == "apache-2.0" and f"- name: {corpus}" in card.text
    last = [e for e in trainer.state.log_history if "eval_loss" in e][-1]
    assert {(r.task_type, r.dataset_type, r.dataset_name) for r in results} == {("text-generation", "unknown", corpus)}
    assert {r.metric_type: r.metric_value for r in results} == {
        "loss": round(last["eval_loss"], 4), "accuracy": round(last["eval_accuracy"], 4),
        "perplexity": round(last["eval_perplexity"], 4)}
    assert card_of(trainer, license="mit").data.license == "mit"


def test_a_run_without_evaluation_has_no_model_index(tmp_path):
    trainer = finished_run(tmp_path, eval_strategy="no", save_strategy="no")
    card = card_of(trainer)
    assert "model-index" not in card.data.to_dict() and "Final eval loss: not evaluated" in card.text
