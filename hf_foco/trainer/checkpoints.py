"""Which checkpoint a killed run resumes from: the latest *complete* ``checkpoint-N``, never a partial one.

transformers 5.x (``Trainer._save_checkpoint``) writes ``output_dir/checkpoint-N`` in place, with no
temporary directory, no rename and no fsync, in this order: the model (``config.json``, the safetensors
weights, the tokenizer, ``training_args.bin``), ``optimizer.pt``, ``scheduler.pt``, ``scaler.pt`` (only with
a gradient scaler), ``rng_state.pth`` (``rng_state_<rank>.pth``, written by each rank, under DDP) and
``trainer_state.json`` last. A process killed in between leaves a directory with the right name and only
some of the files. transformers' own ``get_last_checkpoint`` looks at names only and picks it; resuming
from it then fails on the missing ``trainer_state.json``, or (killed while writing that file) on its
truncated JSON, and with the state present a missing optimizer, scheduler or RNG file is skipped silently,
so the run would go on with a fresh optimizer.

A checkpoint is therefore *complete* when ``trainer_state.json`` parses and records step N (the last file:
every file the same process wrote before it is whole after a crash of the process; a power cut can still
lose unsynced data), every file a resume needs is there (model weights, optimizer and scheduler state) and
every file in it reads (:func:`checkpoint_corruption`: a disk that filled up, a copy that was cut short, NaN
bytes in the weights). The RNG files are not needed: a run resumed with another number of processes (or one
whose RNG file is gone) resumes with a warning that its random streams differ from an uninterrupted run's.
Plain, DDP and FSDP layouts are recognised.

Nothing written is ever destroyed silently: when ``output_dir`` holds a *finished* checkpoint (its
``trainer_state.json`` parses) that cannot be resumed from (``--save_only_model`` wrote no optimizer state),
or the final weights of a finished run, a restart from scratch would overwrite it, so it is refused; the
fix is a new ``--output_dir`` or ``--overwrite_output_dir``, which removes the old checkpoints first, saying so.
A corrupt checkpoint is skipped with a warning and the previous complete one is resumed, and so is one
marked ``nonfinite_next_step.json`` by the NaN guard (:mod:`.stability`): the step right after it was
non-finite, so its weights are what diverged.

Every checkpoint ``FocoTrainer`` writes also holds ``resume_record.json``: the optimizer (name and
hyperparameters) and, from the pretraining job, the model and data settings. On resume
:func:`resume_differences` lists what changed, so a run never continues silently with other settings.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import zipfile
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from transformers.trainer import OPTIMIZER_NAME, OPTIMIZER_NAME_BIN, SCHEDULER_NAME, TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME, logging

logger = logging.get_logger(__name__)

_CHECKPOINT_NAME = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")
# What a resume reads; any one of the glob patterns satisfies an entry (FSDP: pytorch_model_fsdp*, optimizer_0/).
_RESUME_FILES = {"model weights": (SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME, "pytorch_model_fsdp*"),
                 "optimizer state": (OPTIMIZER_NAME, OPTIMIZER_NAME_BIN, "optimizer_*"),
                 "scheduler state": (SCHEDULER_NAME,)}
# --resume_from_checkpoint values that ask for the latest complete checkpoint rather than naming one.
LATEST = ("latest", "true")
RESUME_RECORD = "resume_record.json"
# Written into checkpoint-N when step N+1 had non-finite gradients: its weights led there, so no resume uses it.
POISONED = "nonfinite_next_step.json"


def _state_step(path: Path) -> int | str:
    """The step ``trainer_state.json`` records, or why it cannot be read."""
    try:
        return int(json.loads((path / TRAINER_STATE_NAME).read_text())["global_step"])
    except FileNotFoundError:
        return f"no {TRAINER_STATE_NAME}, the file written last"
    except (ValueError, KeyError, TypeError):
        return f"{TRAINER_STATE_NAME} is truncated or has no global_step"


def missing_resume_files(path: str | Path, need_optimizer: bool = True) -> str | None:
    """What of the files a resume reads (weights, optimizer and scheduler state) ``path`` lacks, or None."""
    for what, patterns in _RESUME_FILES.items():
        if what == "optimizer state" and not need_optimizer:
            continue
        if not any(next(Path(path).glob(pattern), None) for pattern in patterns):
            return f"no {what} ({' / '.join(patterns)})"
    return None


def checkpoint_problem(path: str | Path) -> str | None:
    """Why ``path`` (a ``checkpoint-N`` directory) cannot be resumed from, or None when it is complete."""
    path = Path(path)
    match = _CHECKPOINT_NAME.match(path.name)
    if match is None:
        return f"its name is not {PREFIX_CHECKPOINT_DIR}-<step>"
    step = _state_step(path)
    if isinstance(step, str):
        return step
    if step != int(match.group(1)):
        return f"{TRAINER_STATE_NAME} records step {step}"
    if (path / POISONED).is_file():
        return f"{POISONED}: the step after it had non-finite gradients, so its weights are suspect"
    return missing_resume_files(path) or checkpoint_corruption(path)


def rng_problem(path: str | Path, world_size: int = 1) -> str | None:
    """Which RNG files of a ``world_size``-process run ``path`` lacks (the resume then warns), or None."""
    names = ["rng_state.pth"] if world_size <= 1 else [f"rng_state_{rank}.pth" for rank in range(world_size)]
    missing = [name for name in names if not (Path(path) / name).is_file()]
    return f"no {', '.join(missing)} (the RNG state of each of the run's {world_size} process(es))" if missing else None


def checkpoint_corruption(checkpoint: str | os.PathLike) -> str | None:
    """What makes a ``checkpoint-N`` directory unusable for a resume (missing, or a file that does not parse:
    truncated or overwritten weights, optimizer/scheduler/RNG state or JSON); None when every file reads.

    It reads every byte once: every safetensors tensor (which must be finite: a resume from NaN weights
    would report a diverged run as fine), the CRC of every member of the torch files' zip archives (a
    damaged interior passes the zip directory check and crashes every resume) and JSON.
    """
    path = Path(checkpoint)
    if not path.is_dir():
        return "no such directory"
    for file in sorted(p for p in path.iterdir() if p.is_file()):
        try:
            if file.suffix == ".safetensors":
                with safe_open(file, "pt") as weights:
                    for name in weights.keys():  # noqa: SIM118 (safe_open has no __iter__)
                        tensor = weights.get_tensor(name)
                        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
                            return f"{file.name} holds non-finite weights ({name})"
            elif file.suffix in (".pt", ".pth", ".bin"):  # torch.save writes zip archives
                with zipfile.ZipFile(file) as archive:
                    if (bad := archive.testzip()) is not None:
                        raise zipfile.BadZipFile(f"member {bad} fails its CRC check")
            elif file.suffix == ".json":
                json.loads(file.read_text())
        except (SafetensorError, zipfile.BadZipFile, ValueError, OSError, RuntimeError) as err:
            return f"{file.name} is corrupt ({type(err).__name__}: {err})"
    return None


def _checkpoints(output_dir: Path) -> list[Path]:
    """The ``checkpoint-N`` directories of ``output_dir``, by step."""
    if not output_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in output_dir.iterdir() if p.is_dir() and (m := _CHECKPOINT_NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_complete_checkpoint(output_dir: str | Path) -> str | None:
    """The highest-step complete ``checkpoint-N`` in ``output_dir`` (see the module docstring), or None.

    Every partial or corrupt checkpoint above it is named in a warning with what is wrong; nothing is
    deleted (the run that resumes overwrites it when it reaches that step again).
    """
    for path in reversed(_checkpoints(Path(output_dir))):
        problem = checkpoint_problem(path)
        if problem is None:
            return str(path)
        logger.warning(f"Skipping partial checkpoint {path}: {problem} (it was being written when the run "
                       "stopped, was damaged, or was left by another run); resuming from an earlier one.")
    return None


def _kept_results(output_dir: Path) -> list[str]:
    """What a restart from scratch in ``output_dir`` would overwrite: finished checkpoints (each with why it
    cannot be resumed) and final weights."""
    kept = [f"{p.name} ({checkpoint_problem(p)})" for p in _checkpoints(output_dir) if isinstance(_state_step(p), int)]
    return kept + [name for name in (SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME) if (output_dir / name).is_file()]


def clear_checkpoints(output_dir: str | Path) -> list[str]:
    """``--overwrite_output_dir``: remove every ``checkpoint-N`` of ``output_dir`` (named in a warning)."""
    removed = []
    for path in _checkpoints(Path(output_dir)):
        shutil.rmtree(path)
        removed.append(path.name)
    if removed:
        logger.warning(f"--overwrite_output_dir: removed {', '.join(removed)} from {output_dir}; training starts over.")
    return removed


def checkpoint_to_resume(output_dir: str | Path, requested: str | None = None, world_size: int = 1,
                         overwrite: bool = False) -> str | None:
    """The checkpoint a pretraining run resumes from, given ``--resume_from_checkpoint`` (``requested``).

    A path keeps its meaning (the job checks it). ``latest`` or ``true`` asks for the latest complete
    checkpoint and fails when there is none. Unset, an ``output_dir`` that already holds a complete
    checkpoint is resumed from its latest one, as transformers' example scripts do: rerunning a killed
    command continues the run instead of starting it over. ``overwrite`` (``--overwrite_output_dir``)
    starts over. A restart from scratch that would overwrite a finished checkpoint or final weights is
    refused (module docstring).
    """
    if requested is not None and str(requested).lower() not in LATEST:
        return requested
    if overwrite:
        return None
    found = latest_complete_checkpoint(output_dir)
    if found is None and requested is not None:
        raise ValueError(f"--resume_from_checkpoint {requested}: {str(output_dir)!r} holds no complete checkpoint "
                         "to resume from; pass a checkpoint directory, or leave the flag out to start from scratch.")
    if found is None:
        if kept := _kept_results(Path(output_dir)):
            raise ValueError(
                f"--output_dir {output_dir} holds {', '.join(kept)} of an earlier run but no checkpoint to resume "
                "from, and starting over would overwrite them. Pass a new --output_dir, or --overwrite_output_dir true to start over there, or "
                "--resume_from_checkpoint DIR --reset_optimizer_state true to continue from a checkpoint's weights.")
        return None
    logger.warning(f"Resuming from {found}, the latest complete checkpoint in {output_dir} (use an empty "
                   "--output_dir, or --overwrite_output_dir true, to start from scratch).")
    if problem := rng_problem(found, world_size):
        logger.warning(f"{found} has {problem}: it was saved by a run with another number of processes, so the "
                       "resumed run's random streams (dropout, data order) differ from an uninterrupted run's.")
    return found


def resume_differences(checkpoint: str | Path, current: dict) -> dict[str, str]:
    """Each setting of ``current`` (a resume record: section -> settings) that differs from the one recorded in
    ``checkpoint``'s ``resume_record.json``: section -> "key: recorded -> now, ...". Empty when none differ or
    the checkpoint has no record (one not written by FocoTrainer)."""
    try:
        recorded = json.loads((Path(checkpoint) / RESUME_RECORD).read_text())
    except (OSError, ValueError):
        return {}
    current = json.loads(json.dumps(current, default=str))  # as it would read back (tuples -> lists)
    differences = {}
    for section, now in current.items():
        then = recorded.get(section)
        if then is None or then == now:
            continue
        if isinstance(now, dict) and isinstance(then, dict):
            changed = [f"{k}: {then.get(k)!r} -> {now.get(k)!r}" for k in sorted({*now, *then}) if then.get(k) != now.get(k)]
        else:
            changed = [f"{then!r} -> {now!r}"]
        differences[section] = ", ".join(changed)
    return differences


def optimizer_change_message(checkpoint: str | Path, change: str) -> str:
    """The refusal of a resume whose optimizer differs from the one that saved the checkpoint."""
    return (f"{checkpoint} was saved by another optimizer than this run's ({change}); its state would be loaded "
            "into this one. Keep the checkpoint's optimizer, pass a new --output_dir, or pass "
            "--reset_optimizer_state true to continue its weights with a fresh optimizer state.")


def last_checkpoint_before(output_dir: str | Path, step: int) -> str | None:
    """The latest complete checkpoint of ``output_dir`` saved before ``step`` (the last good state), or None."""
    good = [p for p in _checkpoints(Path(output_dir)) if int(p.name.rsplit("-", 1)[1]) < step]
    return next((str(p) for p in reversed(good) if checkpoint_problem(p) is None), None)
