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
lose unsynced data) and every file the resume reads is there: model weights, optimizer and scheduler
state, and the RNG state of each of this run's ranks (under DDP rank k writes its own without a barrier,
so rank 0's ``trainer_state.json`` does not prove it), and every file in it reads
(:func:`checkpoint_corruption`: a disk that filled up or a copy that was cut short). Plain, DDP and FSDP
layouts are recognised.
"""

from __future__ import annotations

import json
import os
import re
import zipfile
from pathlib import Path

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


def checkpoint_problem(path: str | Path, world_size: int = 1) -> str | None:
    """Why ``path`` (a ``checkpoint-N`` directory) cannot be resumed from, or None when it is complete."""
    path = Path(path)
    match = _CHECKPOINT_NAME.match(path.name)
    if match is None:
        return f"its name is not {PREFIX_CHECKPOINT_DIR}-<step>"
    try:
        step = json.loads((path / TRAINER_STATE_NAME).read_text())["global_step"]
    except FileNotFoundError:
        return f"no {TRAINER_STATE_NAME}, the file written last"
    except (ValueError, KeyError, TypeError):
        return f"{TRAINER_STATE_NAME} is truncated or has no global_step"
    if step != int(match.group(1)):
        return f"{TRAINER_STATE_NAME} records step {step}"
    for what, patterns in _RESUME_FILES.items():
        if not any(next(path.glob(pattern), None) for pattern in patterns):
            return f"no {what} ({' / '.join(patterns)})"
    rng = ["rng_state.pth"] if world_size <= 1 else [f"rng_state_{rank}.pth" for rank in range(world_size)]
    missing = [name for name in rng if not (path / name).is_file()]
    if missing:
        return f"no {', '.join(missing)} (the RNG state of each of the run's {world_size} rank(s))"
    return checkpoint_corruption(path)


def checkpoint_corruption(checkpoint: str | os.PathLike) -> str | None:
    """What makes a ``checkpoint-N`` directory unusable for a resume (missing, or a file that does not parse:
    truncated or overwritten weights, optimizer/scheduler/RNG state or JSON); None when every file reads.

    Cheap: safetensors headers (which must cover their file), the zip directories of torch files, and JSON.
    """
    path = Path(checkpoint)
    if not path.is_dir():
        return "no such directory"
    for file in sorted(p for p in path.iterdir() if p.is_file()):
        try:
            if file.suffix == ".safetensors":
                with safe_open(file, "pt"):
                    pass
            elif file.suffix in (".pt", ".pth", ".bin"):  # torch.save writes zip archives
                zipfile.ZipFile(file).close()
            elif file.suffix == ".json":
                json.loads(file.read_text())
        except (SafetensorError, zipfile.BadZipFile, ValueError, OSError) as err:
            return f"{file.name} is corrupt ({type(err).__name__}: {err})"
    return None


def latest_complete_checkpoint(output_dir: str | Path, world_size: int = 1) -> str | None:
    """The highest-step complete ``checkpoint-N`` in ``output_dir`` (see the module docstring), or None.

    Every partial checkpoint above it is named in a warning with what it lacks; nothing is deleted
    (the run that resumes overwrites it when it reaches that step again).
    """
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return None
    candidates = sorted((int(m.group(1)), p) for p in output_dir.iterdir()
                        if p.is_dir() and (m := _CHECKPOINT_NAME.match(p.name)))
    for _, path in reversed(candidates):
        problem = checkpoint_problem(path, world_size)
        if problem is None:
            return str(path)
        logger.warning(f"Skipping partial checkpoint {path}: {problem} (it was being written when the run "
                       "stopped, or was left by another run); resuming from an earlier one.")
    return None


def checkpoint_to_resume(output_dir: str | Path, requested: str | None = None, world_size: int = 1) -> str | None:
    """The checkpoint a pretraining run resumes from, given ``--resume_from_checkpoint`` (``requested``).

    A path keeps its meaning (transformers checks it). ``latest`` or ``true`` asks for the latest complete
    checkpoint and fails when there is none. Unset, an ``output_dir`` that already holds a complete
    checkpoint is resumed from its latest one, as transformers' example scripts do (``--overwrite_output_dir``,
    their way out, no longer exists in transformers 5): rerunning a killed command continues the run instead
    of starting it over. To start from scratch, use an empty ``--output_dir``.
    """
    if requested is not None and str(requested).lower() not in LATEST:
        return requested
    found = latest_complete_checkpoint(output_dir, world_size)
    if found is None and requested is not None:
        raise ValueError(f"--resume_from_checkpoint {requested}: {str(output_dir)!r} holds no complete checkpoint "
                         "to resume from; pass a checkpoint directory, or leave the flag out to start from scratch.")
    if found is not None:
        logger.warning(f"Resuming from {found}, the latest complete checkpoint in {output_dir} (use an empty "
                       "--output_dir to start from scratch).")
    return found
