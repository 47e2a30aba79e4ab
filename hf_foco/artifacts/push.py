"""Upload a finished run to the Hugging Face Hub: ``hf-foco push OUTPUT_DIR --repo_id USER/NAME``.

Exactly the files a user of the model needs are uploaded, by ``HfApi.upload_folder`` with allow and ignore
patterns (never checkpoints or optimizer states): safetensors weights, config, tokenizer files, training
arguments, the result files transformers' push uploads too (``eval_results.json``, ``train_results.json``,
``all_results.json``, ``trainer_state.json``), ``stability.json``, the loss curve, the model card, and, as
transformers' push does, TensorBoard's event files (``--report_to tensorboard`` writes them under
``--logging_dir``, by default ``runs/`` in the output folder; the Hub shows them in the "Training metrics" tab).
With ``HF_HUB_OFFLINE=1`` the push fails before it touches anything, and says how to push later. A malformed
repository id, or a Hub that cannot be reached, fails before the card is rewritten: the run directory changes
only when the upload can start.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..rundir import (
    ALL_RESULTS_FILE,
    CONFIG_FILE,
    EVAL_RESULTS_FILE,
    LOSS_CURVE_FILE,
    MODEL_CARD_FILE,
    STABILITY_FILE,
    TRAIN_RESULTS_FILE,
    TRAINER_STATE_FILE,
    TRAINING_ARGS_FILE,
    WEIGHTS_FILES,
)

UPLOAD_PATTERNS = (
    "*.safetensors", WEIGHTS_FILES[1], CONFIG_FILE, "generation_config.json",
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
    "added_tokens.json", "tokenizer.model", "chat_template.jinja",
    TRAINING_ARGS_FILE, EVAL_RESULTS_FILE, TRAIN_RESULTS_FILE, ALL_RESULTS_FILE, TRAINER_STATE_FILE, STABILITY_FILE,
    LOSS_CURVE_FILE, MODEL_CARD_FILE,
)

# TensorBoard event files at any depth (fnmatch's * crosses folders).
TENSORBOARD_PATTERNS = ("*tfevents*",)
# Never uploaded, wherever they match: checkpoints (with their optimizer states) and private files, as transformers.
IGNORE_PATTERNS = ("checkpoint-*", "_*")


class PushError(ValueError):
    """A push that cannot happen; the message says why and what to do."""


def ensure_online(output_dir, repo_id) -> None:
    """Fail before anything is written when the Hub cannot be reached by configuration."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        raise _offline_error(output_dir, repo_id)


def _offline_error(output_dir, repo_id) -> PushError:
    return PushError(f"Cannot push {output_dir} to {repo_id}: HF_HUB_OFFLINE=1 forbids network access. The local run "
                     "is unchanged (train without --push_to_hub to keep it local); on a machine with network access "
                     f"run `hf-foco push {output_dir} --repo_id {repo_id}` (unset HF_HUB_OFFLINE and log in with "
                     "`hf auth login` first).")


def push_run(output_dir: str | os.PathLike, repo_id: str, *, token: str | None = None, private: bool | None = None,
             revision: str | None = None, commit_message: str | None = "Upload pretrained model",
             write_artifacts: bool = True, dataset_info: dict | None = None, create: bool = True,
             blocking: bool = True):
    """Create ``repo_id`` if needed (``create``) and upload the run with ``upload_folder``: the files matching
    :data:`UPLOAD_PATTERNS` or :data:`TENSORBOARD_PATTERNS`, none under :data:`IGNORE_PATTERNS`. Returns the
    ``CommitInfo``, or a ``Future`` of it with ``blocking=False``.

    ``write_artifacts`` first (re)writes the card and loss curve with :func:`hf_foco.artifacts.render_run`.
    """
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HFValidationError, HTTPError, OfflineModeIsEnabled
    from huggingface_hub.utils import validate_repo_id

    ensure_online(output_dir, repo_id)
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise PushError(f"--repo_id {repo_id!r} is not a Hub repository id ({err}). Pass one like "
                        "'USER/NAME'.") from None
    out = Path(output_dir)
    if not out.is_dir():
        raise PushError(f"{out} is not a directory: pass the output_dir of a finished run.")
    if not any(out.glob("*.safetensors")) or not (out / CONFIG_FILE).is_file():
        raise PushError(f"{out} holds no saved model (safetensors weights and config.json): run "
                        "trainer.save_model() at the end of training, or pass the right directory.")
    api = HfApi(token=token)
    try:
        if create:  # the first network call: before the card is rewritten
            api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        if write_artifacts:
            from . import render_run

            render_run(out, dataset_info=dataset_info, repo_id=repo_id)
        return api.upload_folder(repo_id=repo_id, folder_path=out, repo_type="model", revision=revision,
                                 allow_patterns=[*UPLOAD_PATTERNS, *TENSORBOARD_PATTERNS],
                                 ignore_patterns=list(IGNORE_PATTERNS), commit_message=commit_message,
                                 run_as_future=not blocking)
    except OfflineModeIsEnabled:
        raise _offline_error(output_dir, repo_id) from None
    except HTTPError as err:
        raise PushError(f"Cannot push {output_dir} to {repo_id}: {type(err).__name__}: {str(err).splitlines()[0]}. "
                        "Check the network, the repository id and your token (`hf auth login`), then run "
                        f"`hf-foco push {output_dir} --repo_id {repo_id}` again; the local run is kept.") from None
