"""A finished run's output directory: its model card, loss curve and upload to the Hub.

Everything here reads the directory only (the files of :mod:`hf_foco.rundir`), never a live Trainer, so
``hf-foco push`` works on a run finished long ago and nothing here imports the training stack. The
trainer records what only the live run knows (:mod:`hf_foco.trainer.record`), then calls
:func:`render_run`.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..rundir import (
    LOSS_CURVE_FILE,
    MODEL_CARD_FILE,
    RUN_INFO_FILE,
    STABILITY_FILE,
    TRAINER_STATE_FILE,
    read_json,
    write_json,
)
from .card import render_model_card
from .plots import plot_loss_curve

# Entries of an evaluation's log that describe its speed or size, not the model's quality.
_NOT_METRICS = ("_runtime", "_samples_per_second", "_steps_per_second", "_samples", "_model_preparation_time")


def _results(state: dict) -> dict:
    """The numbers the card reports. ``final_train_loss`` is the last logged training loss (where the curve
    ends); ``train_loss`` is the Trainer's mean over the whole run; ``eval_metrics`` holds every quality metric
    of the last evaluation, without its ``eval_`` prefix."""
    history = state.get("log_history", [])
    evals = [e for e in history if "eval_loss" in e]
    summary = next((e for e in reversed(history) if "train_runtime" in e), {})
    last = next((e for e in reversed(history) if "loss" in e), {})
    out = {"steps": state.get("global_step"), "tokens_seen": state.get("num_input_tokens_seen") or None,
           "final_train_loss": last.get("loss"), "final_train_loss_step": last.get("step"),
           "train_loss": summary.get("train_loss"), "train_runtime": summary.get("train_runtime")}
    if evals:
        out.update(eval_loss=evals[-1]["eval_loss"], eval_perplexity=evals[-1].get("eval_perplexity"),
                   eval_accuracy=evals[-1].get("eval_accuracy"))
        out["eval_metrics"] = {key[len("eval_"):]: value for key, value in evals[-1].items()
                               if key.startswith("eval_") and not key.endswith(_NOT_METRICS)
                               and isinstance(value, (int, float)) and not isinstance(value, bool)}
    return out


def render_run(output_dir: str | os.PathLike, dataset_info: dict | None = None,
               repo_id: str | None = None) -> dict[str, Path]:
    """Draw ``loss_curve.png`` and write the model card ``README.md`` of a finished run's directory.

    Args:
        output_dir: holds ``trainer_state.json`` and ``run_info.json`` (written at the end of training by
            :func:`hf_foco.trainer.write_run_artifacts`).
        dataset_info: replaces the recorded description of the data, e.g. ``{"name": "roneneldan/TinyStories",
            "tokenizer": "gpt2", "sequence_length": 512, "train_tokens": 4.7e8}``.
        repo_id: the Hub repository the card's loading snippet names (default: the recorded one).

    Returns: file name -> path of every file written.
    """
    out = Path(output_dir)
    missing = [n for n in (TRAINER_STATE_FILE, RUN_INFO_FILE) if not (out / n).is_file()]
    if missing:
        raise FileNotFoundError(f"{out} is not a finished hf_foco run: {', '.join(missing)} missing. Call "
                                "write_run_artifacts(trainer) at the end of training (scripts/run_pretrain.py does).")
    state, record = read_json(out / TRAINER_STATE_FILE), read_json(out / RUN_INFO_FILE)
    if dataset_info is not None:
        record["dataset"] = dict(dataset_info)
        write_json(out / RUN_INFO_FILE, record)
    if repo_id is not None:
        record.update(repo_id=repo_id, model_name=repo_id.split("/")[-1])
    record["results"] = results = _results(state)
    length = record.get("dataset", {}).get("sequence_length")
    if results["tokens_seen"] is None and results["steps"] and record.get("global_batch_size") and length:
        # Not counted during training (include_num_input_tokens_seen off: the count is a host sync per
        # micro-batch): every step trains one global batch of full sequences.
        results["tokens_seen"] = results["steps"] * record["global_batch_size"] * length
        results["tokens_seen_derived"] = True
    record["stability"] = read_json(out / STABILITY_FILE)
    written: dict[str, Path] = {}
    if plot_loss_curve(state.get("log_history", []), out / LOSS_CURVE_FILE, title=record.get("model_name") or ""):
        record["loss_curve"] = LOSS_CURVE_FILE
        written[LOSS_CURVE_FILE] = out / LOSS_CURVE_FILE
    (out / MODEL_CARD_FILE).write_text(render_model_card(record))
    written[MODEL_CARD_FILE] = out / MODEL_CARD_FILE
    return written


__all__ = ["render_model_card", "render_run"]
