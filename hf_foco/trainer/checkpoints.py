"""What a run does with the output directory it finds: which checkpoint to resume from, whether the run is
already finished, and every refusal (:func:`plan_resume`).

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
Plain, DDP and FSDP layouts are recognised. A checkpoint marked ``nonfinite_next_step.json`` by the NaN
guard (:mod:`.stability`) is not resumed from either: the step right after it was non-finite, so its
weights are what diverged. A checkpoint named explicitly (``--resume_from_checkpoint DIR``) must be complete
in the same sense, except for its name and the NaN guard's mark (resuming from it is then a choice).

Nothing written is ever destroyed or overwritten silently:

* a checkpoint the run does not resume from but would write again (a partial, corrupt or marked one above
  the resumed one, or every later one when an earlier one is named explicitly) is moved aside before
  training, to ``checkpoint-N.<why>`` (``incomplete``, ``corrupt``, ``diverged``, ``unused``), with a warning;
* when ``output_dir`` holds no complete checkpoint but a *finished* one (its ``trainer_state.json`` parses)
  that cannot be resumed from (``--save_only_model`` wrote no optimizer state), or the final weights of a
  run, a restart from scratch would overwrite them, so it is refused; the fix is a new ``--output_dir`` or
  ``--overwrite_output_dir``, which removes the old checkpoints first, saying so.

A run is *finished* when its checkpoint (or its saved final state, without checkpoints) has reached
``--max_steps``; it is *done* when, besides, every file of a finished run is there
(:func:`hf_foco.rundir.final_files`). A done run is left alone; a finished run missing some of its files
(killed after its last checkpoint) is completed without training.

Every checkpoint ``FocoTrainer`` writes also holds ``resume_record.json``: the optimizer (name and
hyperparameters), the batch and schedule and, from the pretraining job, the model and data settings. A
resume compares all of them with the current run's and refuses naming every difference at once.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import os
import re
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from transformers.trainer import OPTIMIZER_NAME, OPTIMIZER_NAME_BIN, SCHEDULER_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME, logging

from ..data.prepared import prepared_fingerprint
from ..rundir import (
    POISONED,
    RESUME_RECORD,
    TRAINER_STATE_FILE,
    WEIGHTS_FILES,
    final_files,
    missing_files,
    read_json,
    unwritable_run_dir,
)

logger = logging.get_logger(__name__)

_CHECKPOINT_NAME = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")
# What a resume reads; any one of the glob patterns satisfies an entry (FSDP: pytorch_model_fsdp*, optimizer_0/).
_RESUME_FILES = {"model weights": (SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME, "pytorch_model_fsdp*"),
                 "optimizer state": (OPTIMIZER_NAME, OPTIMIZER_NAME_BIN, "optimizer_*"),
                 "scheduler state": (SCHEDULER_NAME,)}
# --resume_from_checkpoint values that ask for the latest complete checkpoint rather than naming one, and the
# value that asks for none (transformers' meaning of resume_from_checkpoint=False).
LATEST = ("latest", "true")
NONE = ("false",)


# -- one checkpoint ----------------------------------------------------------------------------------------

def _state_step(path: Path) -> int | str:
    """The step ``trainer_state.json`` records, or why it cannot be read."""
    try:
        return int(json.loads((path / TRAINER_STATE_FILE).read_text())["global_step"])
    except FileNotFoundError:
        return f"no {TRAINER_STATE_FILE}, the file written last"
    except (ValueError, KeyError, TypeError):
        return f"{TRAINER_STATE_FILE} is truncated or has no global_step"


def missing_resume_files(path: str | Path, need_optimizer: bool = True) -> str | None:
    """What of the files a resume reads (weights, optimizer and scheduler state) ``path`` lacks, or None."""
    for what, patterns in _RESUME_FILES.items():
        if what == "optimizer state" and not need_optimizer:
            continue
        if not any(next(Path(path).glob(pattern), None) for pattern in patterns):
            return f"no {what} ({' / '.join(patterns)})"
    return None


def _diagnose(path: Path, need_optimizer: bool = True, named: bool = True) -> tuple[str, str] | None:
    """(kind, what is wrong) when ``path`` cannot be resumed from, else None. ``kind`` names the move-aside
    directory: ``incomplete`` (a file missing, or the state of another step), ``corrupt`` (a file that does not
    read) or ``diverged`` (the NaN guard's mark). ``named``: a ``checkpoint-N`` of an output directory, whose
    name must match its state and whose mark counts; an explicitly named one is judged by its files only."""
    if not path.is_dir():
        return "incomplete", "no such directory"
    step = _state_step(path)
    if isinstance(step, str):
        return "incomplete", step
    if named:
        match = _CHECKPOINT_NAME.match(path.name)
        if match is None:
            return "incomplete", f"its name is not {PREFIX_CHECKPOINT_DIR}-<step>"
        if step != int(match.group(1)):
            return "incomplete", f"{TRAINER_STATE_FILE} records step {step}"
        if (path / POISONED).is_file():
            return "diverged", f"{POISONED}: the step after it had non-finite gradients, so its weights are suspect"
    if problem := missing_resume_files(path, need_optimizer):
        return "incomplete", problem
    if problem := checkpoint_corruption(path):
        return "corrupt", problem
    return None


def checkpoint_problem(path: str | Path) -> str | None:
    """Why ``path`` (a ``checkpoint-N`` directory) cannot be resumed from, or None when it is complete."""
    found = _diagnose(Path(path))
    return found[1] if found else None


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


# -- the checkpoints of an output directory ----------------------------------------------------------------

def _checkpoints(output_dir: Path) -> list[Path]:
    """The ``checkpoint-N`` directories of ``output_dir``, by step."""
    if not output_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in output_dir.iterdir() if p.is_dir() and (m := _CHECKPOINT_NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def _step_of(path: Path) -> int:
    return int(path.name.rsplit("-", 1)[1])


def _latest_complete(output_dir: Path) -> tuple[Path | None, list[tuple[Path, str, str]]]:
    """The highest-step complete checkpoint of ``output_dir`` (or None) and every one above it that is not
    complete, as (path, kind, what is wrong), each named in a warning."""
    skipped = []
    for path in reversed(_checkpoints(output_dir)):
        problem = _diagnose(path)
        if problem is None:
            return path, skipped
        skipped.append((path, *problem))
        logger.warning(f"Skipping partial checkpoint {path}: {problem[1]} (it was being written when the run "
                       "stopped, was damaged, or was left by another run); resuming from an earlier one.")
    return None, skipped


def latest_complete_checkpoint(output_dir: str | Path) -> str | None:
    """The highest-step complete ``checkpoint-N`` in ``output_dir`` (see the module docstring), or None; every
    partial or corrupt checkpoint above it is named in a warning with what is wrong."""
    found, _ = _latest_complete(Path(output_dir))
    return None if found is None else str(found)


def last_checkpoint_before(output_dir: str | Path, step: int) -> str | None:
    """The latest complete checkpoint of ``output_dir`` saved before ``step`` (the last good state), or None."""
    good = [p for p in _checkpoints(Path(output_dir)) if _step_of(p) < step]
    return next((str(p) for p in reversed(good) if checkpoint_problem(p) is None), None)


def save_failure(output_dir: str | Path, step: int, error: OSError, what: str | None = None) -> str:
    """The message of a save that failed at ``step`` (``what`` was being written: by default that step's
    checkpoint): the error, the last good checkpoint, and the fix."""
    good = last_checkpoint_before(output_dir, step + 1 if what else step)
    return (f"could not write {what or f'{PREFIX_CHECKPOINT_DIR}-{step}'} in {output_dir} ({type(error).__name__}: "
            f"{error}). The last good checkpoint is {good or 'none'}: make {output_dir} writable (or free space), "
            "then rerun the same command to resume from it.")


# -- the settings a checkpoint was saved with --------------------------------------------------------------

def files_fingerprint(patterns: list[str] | None) -> str:
    """A short hash of the names and sizes of the files ``patterns`` (globs) match: edited or other training
    files change it."""
    files = sorted({f for pattern in (patterns or []) for f in glob.glob(pattern) if os.path.isfile(f)})
    sizes = json.dumps([(f, os.path.getsize(f)) for f in files])
    return hashlib.sha256(sizes.encode()).hexdigest()[:16]


def settings_record(model_args, data_args) -> dict:
    """The model and data a run trains, as its checkpoints record them (beside the optimizer and the batch and
    schedule that :class:`FocoTrainer` adds): a resume that changes either (another ``--config_overrides``,
    other or edited ``--train_files``) is refused instead of mixing two runs."""
    data = {k: v for k, v in dataclasses.asdict(data_args).items() if k != "data_cache_dir"}
    data["train_files_fingerprint"] = files_fingerprint(data_args.train_files)
    if data_args.prepared_data:  # the same directory prepared again is other data
        data["prepared_data_fingerprint"] = prepared_fingerprint(data_args.prepared_data)
    return {"model": dataclasses.asdict(model_args), "data": data}


def resume_record(args, settings: dict | None = None) -> dict:
    """What a checkpoint records, to compare on resume: the optimizer and the batch and schedule from the
    training arguments (``FocoTrainingArguments``), and ``settings`` (:func:`settings_record`)."""
    record = dict(settings or {})
    if hasattr(args, "optimizer_record"):
        record["optimizer"] = args.optimizer_record()
        record["training"] = args.training_record()
    return record


def resume_differences(checkpoint: str | Path, current: dict) -> dict[str, str]:
    """Each setting of ``current`` (a resume record: section -> settings) that differs from the one recorded in
    ``checkpoint``'s ``resume_record.json`` (or in a file of that name itself): section -> "key: recorded -> now,
    ...". Empty when none differ or there is no record (a checkpoint not written by FocoTrainer)."""
    path = Path(checkpoint)
    try:
        recorded = json.loads((path if path.is_file() else path / RESUME_RECORD).read_text())
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


def refuse_changed_settings(checkpoint: str | Path, record: dict, reset_optimizer_state: bool = False,
                            what: str | None = None) -> None:
    """Refuse a resume whose settings (``record``) differ from those ``checkpoint`` was saved with, naming every
    difference of every section at once and the fix. ``reset_optimizer_state`` allows another optimizer (its
    state then starts afresh). ``what`` names the saved state in the message (default: the checkpoint)."""
    changed = resume_differences(checkpoint, record)
    if reset_optimizer_state:
        changed.pop("optimizer", None)
    if not changed:
        return
    optimizer = changed.pop("optimizer", None)
    parts = [f"by another optimizer than this run's ({optimizer})"] if optimizer else []
    if changed:
        parts.append(f"with other settings than this run's ({'; '.join(f'{k}: {v}' for k, v in changed.items())})")
    fix = "Rerun with the checkpoint's settings, or pass a new --output_dir (or --overwrite_output_dir true) to start " \
          "over with these"
    if optimizer:
        fix += (", or pass --reset_optimizer_state true to continue its weights with a fresh optimizer state"
                + (" (for the optimizer's change only)" if changed else ""))
    raise ValueError(f"{what or checkpoint} was saved {' and '.join(parts)}, which a resume would ignore or mix. {fix}.")


def refuse_incomplete_resume(checkpoint: str | Path, reset_optimizer_state: bool = False) -> None:
    """Refuse to resume from ``checkpoint`` when a file the resume needs is missing (transformers would restart
    the optimizer or the warmup silently): the check :class:`FocoTrainer` makes on every resume."""
    if problem := missing_resume_files(checkpoint, need_optimizer=not reset_optimizer_state):
        raise ValueError(f"Checkpoint {checkpoint} has {problem}: resuming would restart the optimizer or the "
                         "learning-rate warmup silently. Resume from a complete checkpoint, or pass "
                         "--reset_optimizer_state true to start the optimizer state afresh on purpose.")


# -- the plan ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ResumePlan:
    """What a run does with its output directory (:func:`plan_resume`)."""

    checkpoint: str | None = None  # resume from it (None: start from scratch)
    finished_step: int | None = None  # the run already reached its last step (at ``checkpoint`` if one)
    missing: tuple[str, ...] = ()  # files a finished run lacks: written without training
    set_aside: tuple[tuple[str, str], ...] = ()  # (checkpoint, why): moved aside before training
    clear: bool = False  # --overwrite_output_dir: the old checkpoints are removed before training

    @property
    def done(self) -> bool:
        """Finished with every file there: nothing to do."""
        return self.finished_step is not None and not self.missing


def _target_steps(args, state: dict) -> int:
    return args.max_steps if args.max_steps > 0 else state.get("max_steps") or 0


def _kept_results(output_dir: Path) -> list[str]:
    """What a restart from scratch in ``output_dir`` would overwrite: finished checkpoints (each with why it
    cannot be resumed) and final weights."""
    kept = [f"{p.name} ({checkpoint_problem(p)})" for p in _checkpoints(output_dir) if isinstance(_state_step(p), int)]
    return kept + [name for name in WEIGHTS_FILES if (output_dir / name).is_file()]


def _finished_without_checkpoint(output_dir: Path, args, record: dict, stability: bool) -> ResumePlan | None:
    """A run saved without checkpoints (``--save_strategy no``) whose every final file is there and whose
    state reached the target: done, once its recorded settings match."""
    state = read_json(output_dir / TRAINER_STATE_FILE, {}) if (output_dir / TRAINER_STATE_FILE).is_file() else {}
    step = state.get("global_step") if isinstance(state, dict) else None
    if not isinstance(step, int) or missing_files(output_dir, final_files(stability)):
        return None
    if not 0 < _target_steps(args, state) <= step:
        return None
    refuse_changed_settings(output_dir / RESUME_RECORD, record, what=f"The finished run in {output_dir}")
    return ResumePlan(finished_step=step)


def _request(value) -> str | None:
    """``--resume_from_checkpoint`` as one of: None (unset), "latest", "none" or a path."""
    if value is None:
        return None
    text = str(value).strip()
    return "latest" if text.lower() in LATEST else "none" if text.lower() in NONE else text


def plan_resume(output_dir: str | Path, args, record: dict) -> ResumePlan:
    """What a run with training arguments ``args`` does with ``output_dir`` (module docstring): the
    checkpoint to resume from, whether it is finished (and what it lacks), which checkpoints to move aside
    first; or a ``ValueError`` naming every reason it cannot start and the fix. ``record`` is the run's
    resume record (:func:`resume_record`).

    ``args.resume_from_checkpoint``: unset, an ``output_dir`` holding a complete checkpoint is resumed from its
    latest one, as transformers' example scripts do (rerunning a killed command continues the run); ``latest``
    or ``true`` asks for it and fails when there is none; ``false`` resumes nothing and fails when a checkpoint
    would be overwritten; a path names the checkpoint. ``args.overwrite_output_dir`` starts over.
    """
    out = Path(output_dir)
    if problem := unwritable_run_dir(out):
        raise ValueError(f"--output_dir {output_dir} cannot hold the run's checkpoints: {problem}. Pass a --output_dir "
                         "you can write to, or make that path writable.")
    reset = bool(getattr(args, "reset_optimizer_state", False))
    stability = bool(getattr(args, "stability_monitor", True))
    requested = _request(args.resume_from_checkpoint)
    if requested not in (None, "latest", "none"):
        return _plan_explicit(out, Path(requested), args, record, reset, stability)
    if args.overwrite_output_dir:
        return ResumePlan(clear=True)
    found, skipped = _latest_complete(out)
    if found is not None and requested == "none":
        raise ValueError(f"--resume_from_checkpoint {args.resume_from_checkpoint}: {output_dir} holds {found.name}, "
                         "which starting from scratch would overwrite. Leave the flag out to resume from it, or "
                         "pass a new --output_dir (or --overwrite_output_dir true) to start over.")
    if found is None:
        if requested == "latest":
            raise ValueError(f"--resume_from_checkpoint {args.resume_from_checkpoint}: {str(output_dir)!r} holds "
                             "no complete checkpoint to resume from; pass a checkpoint directory, or leave the flag "
                             "out to start from scratch.")
        if finished := _finished_without_checkpoint(out, args, record, stability):
            return finished
        if kept := _kept_results(out):
            raise ValueError(
                f"--output_dir {output_dir} holds {', '.join(kept)} of an earlier run but no checkpoint to resume "
                "from, and starting over would overwrite them. Pass a new --output_dir, or --overwrite_output_dir "
                "true to start over there, or --resume_from_checkpoint DIR --reset_optimizer_state true to continue "
                "from a checkpoint's weights.")
        return ResumePlan(set_aside=tuple((str(p), kind) for p, kind, _ in skipped))
    refuse_changed_settings(found, record, reset)
    plan = _resume_or_finish(out, found, args, stability, tuple((str(p), kind) for p, kind, _ in skipped))
    if plan.finished_step is None:
        logger.warning(f"Resuming from {found}, the latest complete checkpoint in {output_dir} (use an empty "
                       "--output_dir, or --overwrite_output_dir true, to start from scratch).")
        _warn_about(found, args)
    return plan


def _plan_explicit(out: Path, path: Path, args, record: dict, reset: bool, stability: bool) -> ResumePlan:
    """``--resume_from_checkpoint PATH``: complete in its files (module docstring), saved with this run's
    settings; every later checkpoint of ``out`` is moved aside before training writes over it."""
    if problem := _diagnose(path, need_optimizer=not reset, named=False):
        fix = ("" if reset or "optimizer" not in problem[1] else
               ", or pass --reset_optimizer_state true to continue its weights with a fresh optimizer state")
        raise ValueError(f"--resume_from_checkpoint {path} cannot be resumed from: {problem[1]}. Resume from "
                         f"another, intact checkpoint-N directory of the run instead{fix}.")
    if args.overwrite_output_dir and path.resolve().is_relative_to(out.resolve()):
        raise ValueError(f"--overwrite_output_dir true removes the checkpoints of {out}, {path} among them: drop "
                         "--overwrite_output_dir to resume from it, or resume from a checkpoint outside --output_dir.")
    refuse_changed_settings(path, record, reset)
    step = _state_step(path)
    later = [p for p in _checkpoints(out) if _step_of(p) > step and p.resolve() != path.resolve()]
    plan = _resume_or_finish(out, path, args, stability, tuple((str(p), "unused") for p in later),
                             clear=args.overwrite_output_dir)
    if plan.finished_step is None:
        _warn_about(path, args)
    return plan


def _resume_or_finish(out: Path, checkpoint: Path, args, stability: bool, set_aside: tuple,
                      clear: bool = False) -> ResumePlan:
    """Resume from ``checkpoint``, or, when it already holds the run's last step, finish from it."""
    state = read_json(checkpoint / TRAINER_STATE_FILE)
    step = state["global_step"]
    if 0 < _target_steps(args, state) <= step:
        return ResumePlan(checkpoint=str(checkpoint), finished_step=step,
                          missing=tuple(missing_files(out, final_files(stability))))
    return ResumePlan(checkpoint=str(checkpoint), set_aside=set_aside, clear=clear)


def _warn_about(checkpoint: Path, args) -> None:
    """What a resume from ``checkpoint`` cannot reproduce or check, each in a warning."""
    if problem := rng_problem(checkpoint, getattr(args, "world_size", 1)):
        logger.warning(f"{checkpoint} has {problem}: it was saved by a run with another number of processes, so the "
                       "resumed run's random streams (dropout, data order) differ from an uninterrupted run's.")
    if not (checkpoint / RESUME_RECORD).is_file():
        logger.warning(f"{checkpoint} has no {RESUME_RECORD} (it was not saved by hf_foco's trainer): its "
                       "optimizer, batch, model and data settings cannot be compared with this run's.")


def prepare_output_dir(plan: ResumePlan, output_dir: str | Path) -> list[str]:
    """Carry out what ``plan`` asks of ``output_dir`` before training (on the main process only): remove the
    old checkpoints (``--overwrite_output_dir``) or move the unused ones aside, each named in a warning.
    Returns the new names (moved) or the removed names."""
    out = Path(output_dir)
    if plan.clear:
        removed = [p.name for p in _checkpoints(out)]  # never the one resumed from: plan_resume refuses that
        for name in removed:
            shutil.rmtree(out / name)
        if removed:
            logger.warning(f"--overwrite_output_dir: removed {', '.join(removed)} from {output_dir}.")
        return removed
    moved = []
    for path, why in plan.set_aside:
        source = Path(path)
        target = source.with_name(f"{source.name}.{why}")
        counter = 2
        while target.exists():
            target, counter = source.with_name(f"{source.name}.{why}-{counter}"), counter + 1
        source.rename(target)
        moved.append(target.name)
        logger.warning(f"Moved {source.name} aside to {target.name} ({why}): this run does not resume from it and "
                       "would write its step again.")
    return moved
