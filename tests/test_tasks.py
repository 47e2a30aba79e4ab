"""Task-aware defaults: a causal LM gets the pretraining defaults (LM metrics, tokens seen, pretraining card); any
other model gets transformers' stock behaviour plus the optimizer, the stability monitor and a card that names the
optimizer. The stock classification scripts (tests/scripts/stock_glue.py, stock_ner.py, transformers only) train,
evaluate, save and write their card under `hf-foco run`."""

import json

import pytest
import torch
import torch.nn.functional as F
from helpers import STOCK_GLUE, STOCK_NER, common_args, run_stock, stock_clm_args, text_dataset, tiny_gpt2
from huggingface_hub import ModelCard
from huggingface_hub.repocard_data import model_index_to_eval_results
from safetensors.torch import load_file
from transformers import (
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    GPT2Config,
    GPT2ForSequenceClassification,
)

from hf_foco.trainer import FocoTrainer, FocoTrainingArguments
from hf_foco.trainer.task import is_causal_lm, model_task

torch.set_num_threads(1)


def tiny_classifier() -> GPT2ForSequenceClassification:
    torch.manual_seed(0)
    config = GPT2Config(n_layer=1, n_embd=32, n_head=2, n_positions=16, vocab_size=128, num_labels=3,
                        pad_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return GPT2ForSequenceClassification(config)


def classification_data(rows: int = 8):
    data = text_dataset(rows, seed=1).remove_columns("labels")
    return data.add_column("labels", [i % 3 for i in range(rows)])


def test_the_task_comes_from_the_model_class_as_transformers_card_reads_it():
    assert model_task(tiny_gpt2()) == "text-generation" and is_causal_lm(tiny_gpt2())
    assert model_task(tiny_classifier()) == "text-classification" and not is_causal_lm(tiny_classifier())
    assert model_task(torch.nn.Linear(2, 2)) is None
    assert not is_causal_lm(tiny_gpt2(), asked=False) and is_causal_lm(torch.nn.Linear(2, 2), asked=True)


def test_a_sequence_classifier_evaluates_with_the_stock_loss_and_no_lm_defaults(tmp_path):
    """The classifier FocoTrainer once gave LM metrics (and an IndexError at evaluation) evaluates as
    transformers' Trainer does: its own loss, no perplexity, no tokens counted."""
    model, data = tiny_classifier().eval(), classification_data()
    trainer = FocoTrainer(model=model, args=FocoTrainingArguments(**common_args(tmp_path, optim="foco")),
                          eval_dataset=data)
    metrics = trainer.evaluate()
    with torch.no_grad():
        logits = model(input_ids=torch.tensor(data["input_ids"])).logits
    expected = F.cross_entropy(logits.double(), torch.tensor(data["labels"])).item()
    assert metrics["eval_loss"] == pytest.approx(expected, rel=1e-5)
    assert not any(k in metrics for k in ("eval_perplexity", "eval_accuracy"))
    assert trainer.compute_metrics is None and trainer.args.include_num_input_tokens_seen == "no"


def test_causal_lm_defaults_follow_the_model_or_the_flag(tmp_path):
    lm = FocoTrainer(model=tiny_gpt2(), args=FocoTrainingArguments(**common_args(tmp_path, optim="foco")))
    assert lm.compute_metrics is not None and lm.args.include_num_input_tokens_seen == "all"
    told = FocoTrainer(model=tiny_gpt2(), args=FocoTrainingArguments(**common_args(
        tmp_path, optim="foco", causal_lm=False, include_num_input_tokens_seen="non_padding")))
    assert told.compute_metrics is None and told.args.include_num_input_tokens_seen == "non_padding"


@pytest.mark.parametrize("optim", ["kfac", "fop"])
def test_curvature_optimizers_refuse_a_model_that_is_not_a_causal_lm(optim, tmp_path):
    args = FocoTrainingArguments(**common_args(tmp_path, optim=optim))
    with pytest.raises(ValueError, match=f"--optim {optim} preconditions with a causal LM's next-token Fisher, and "
                                         "GPT2ForSequenceClassification is a text-classification model: use an "
                                         "elementwise optimizer"):
        FocoTrainer(model=tiny_classifier(), args=args, train_dataset=classification_data())


SCRIPTS = {"glue": (STOCK_GLUE, "text-classification", AutoModelForSequenceClassification, "accuracy"),
           "ner": (STOCK_NER, "token-classification", AutoModelForTokenClassification, "f1")}


@pytest.mark.slow
@pytest.mark.parametrize("task", SCRIPTS)
def test_a_stock_classification_script_trains_evaluates_saves_and_names_the_optimizer(task, offline_data):
    script, pipeline, auto, metric = SCRIPTS[task]
    out = offline_data / task
    run_stock(script, stock_clm_args(out, "foco", "--learning_rate", "3e-3"), install=True)
    results = json.loads((out / "eval_results.json").read_text())
    assert f"eval_{metric}" in results and "eval_perplexity" not in results  # the script's metrics only
    trained = auto.from_pretrained(out)  # saved weights, config and labels load as the task's model
    labels = {"glue": {"animal", "other"}, "ner": {"B-ANIMAL", "B-OBJECT", "O"}}[task]
    assert set(trained.config.id2label.values()) == labels
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 6 and not state.get("num_input_tokens_seen")
    moved = [e["update_ratio"] for e in state["log_history"] if "update_ratio" in e]  # the stability monitor ran
    assert len(moved) == 6 and all(0 < r < 1 for r in moved)
    assert json.loads((out / "stability.json").read_text())["status"] == "ok"

    card = ModelCard.load(out / "README.md")
    assert card.data.pipeline_tag == pipeline and card.data.license is None and card.data.datasets is None
    assert {"hf-foco", "optimizer-foco"} <= set(card.data.tags) and "causal-lm" not in card.data.tags
    assert f"model for {pipeline} with 0.02 M parameters trained from random initialisation with the **foco** " \
           "optimizer from hf_foco" in card.text
    assert "language model" not in card.text and "continues text" not in card.text and "Tokens seen" not in card.text
    assert f"from transformers import {type(trained).__name__}, AutoTokenizer" in card.text
    # the model-index holds the final evaluation, read back by the Hub library's own parser
    _, evals = model_index_to_eval_results(card.data.to_dict()["model-index"])
    assert {e.metric_type: e.metric_value for e in evals} == pytest.approx(
        {k[len("eval_"):]: round(v, 4) for k, v in results.items()
         if k in ("eval_loss", "eval_accuracy", "eval_precision", "eval_recall", "eval_f1")})
    assert {(e.task_type, e.dataset_type) for e in evals} == {(pipeline, "unknown")}


@pytest.mark.slow
def test_a_native_optimizer_trains_a_classifier_exactly_as_transformers_does(offline_data):
    plain, ours = offline_data / "plain", offline_data / "ours"
    for out, install in ((plain, False), (ours, True)):
        run_stock(STOCK_GLUE, stock_clm_args(out, "adamw_torch", "--learning_rate", "1e-3"), install=install)
    theirs, mine = load_file(plain / "model.safetensors"), load_file(ours / "model.safetensors")
    assert all(torch.equal(theirs[k], mine[k]) for k in theirs)
    assert json.loads((plain / "eval_results.json").read_text())["eval_loss"] == \
        json.loads((ours / "eval_results.json").read_text())["eval_loss"]
