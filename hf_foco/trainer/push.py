"""Upload a finished run to the Hugging Face Hub: ``hf-foco push OUTPUT_DIR --repo-id USER/NAME``.

Exactly the files a user of the model needs are uploaded (never checkpoints, optimizer states or
TensorBoard logs): safetensors weights, config, tokenizer files, training arguments,
``stability.json``, the loss curve and the model card. With ``HF_HUB_OFFLINE=1`` the push fails before it
touches anything, and says how to push later.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import sys
from pathlib import Path

UPLOAD_PATTERNS = (
    "*.safetensors", "model.safetensors.index.json", "config.json", "generation_config.json",
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
    "added_tokens.json", "tokenizer.model", "chat_template.jinja",
    "training_args.json", "stability.json", "loss_curve.png", "README.md",
)


class PushError(RuntimeError):
    """A push that cannot happen; the message says why and what to do."""


def files_to_upload(output_dir: str | os.PathLike) -> list[str]:
    """The top-level files of ``output_dir`` that a push uploads, sorted."""
    names = [p.name for p in Path(output_dir).iterdir() if p.is_file()]
    return sorted(n for n in names if any(fnmatch.fnmatchcase(n, pat) for pat in UPLOAD_PATTERNS))


def ensure_online(output_dir, repo_id) -> None:
    """Fail before anything is written when the Hub cannot be reached by configuration."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        raise _offline_error(output_dir, repo_id)


def _offline_error(output_dir, repo_id) -> PushError:
    return PushError(f"Cannot push {output_dir} to {repo_id}: HF_HUB_OFFLINE=1 forbids network access. The local run "
                     f"is unchanged; on a machine with network access run `hf-foco push {output_dir} --repo-id "
                     f"{repo_id}` (unset HF_HUB_OFFLINE and log in with `hf auth login` first).")


def push_run(output_dir: str | os.PathLike, repo_id: str, *, token: str | None = None, private: bool | None = None,
             revision: str | None = None, commit_message: str | None = "Upload pretrained model",
             write_artifacts: bool = True, dataset_info: dict | None = None):
    """Create ``repo_id`` if needed and upload :func:`files_to_upload`; returns the ``CommitInfo``.

    ``write_artifacts`` first (re)writes the card, loss curve and summary with :func:`write_run_artifacts`.
    """
    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub.errors import OfflineModeIsEnabled

    ensure_online(output_dir, repo_id)
    out = Path(output_dir)
    if not out.is_dir():
        raise PushError(f"{out} is not a directory: pass the output_dir of a finished run.")
    if not any(out.glob("*.safetensors")) or not (out / "config.json").is_file():
        raise PushError(f"{out} holds no saved model (safetensors weights and config.json): run "
                        "trainer.save_model() at the end of training, or pass the right directory.")
    if write_artifacts:
        from .artifacts import write_run_artifacts

        write_run_artifacts(out, dataset_info=dataset_info, repo_id=repo_id)
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(out / name))
                      for name in files_to_upload(out)]
        return api.create_commit(repo_id=repo_id, operations=operations, commit_message=commit_message,
                                 revision=revision, repo_type="model")
    except OfflineModeIsEnabled:
        raise _offline_error(output_dir, repo_id) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("output_dir", help="output directory of a finished run")
    parser.add_argument("--repo-id", required=True, help="Hub repository, USER/NAME")
    parser.add_argument("--private", action="store_true", help="create the repository private")
    parser.add_argument("--revision", default=None, help="branch to push to")
    parser.add_argument("--token", default=None, help="Hub token (default: the logged-in one)")
    parser.add_argument("--dataset-info", type=json.loads, default=None,
                        help="JSON dict describing the training data, shown in the card")


def run(args: argparse.Namespace) -> int:
    try:
        commit = push_run(args.output_dir, args.repo_id, token=args.token, private=args.private or None,
                          revision=args.revision, dataset_info=args.dataset_info)
    except (PushError, FileNotFoundError) as err:
        print(f"hf-foco push: error: {err}", file=sys.stderr)
        return 1
    print(f"Pushed {args.output_dir} to {getattr(commit, 'commit_url', args.repo_id)}")
    return 0
