"""A cheap training-stability monitor: logs what diverging runs look like, and refuses non-finite updates.

Sign-based optimizers (FOCUS, foco, Lion) run at learning rates where AdamW would blow up; when they do
go wrong the signs are a gradient's spikes, a collapsing or exploding update-to-weight ratio, and NaNs.
:class:`StabilityCallback` watches for them at almost no cost:

* ``grad_norm`` (before clipping) is the Trainer's own, read from its logs, not recomputed;
* ``update_ratio`` = ||theta_after - theta_before|| / ||theta_before|| is measured only on steps that
  log (one parameter copy every ``logging_steps`` steps);
* with several parameter groups (K-FAC layers vs AdamW parameters, decayed vs not), the same steps also
  log ``update_rms/<group>`` (RMS of the applied change) and ``update_ratio/<group>``, groups named by
  their ``name`` key (``group<i>`` without one, groups of one name pooled): a group that barely moves or
  runs away shows up in the logs. An optimizer's own ``diagnostics()`` (FOP: its β*/η*) is logged alike;
* a loss spike is a logged loss more than ``spike_zscore`` standard deviations above the mean of the
  trailing ``spike_window`` logged losses, by the rule of :mod:`hf_foco.spikes` (the study reports use the same);
* the guard checks the (clipped) gradients before every optimizer step: one fused norm over them. A
  non-finite loss gives non-finite gradients, so it is caught too. The step's gradients are dropped, so
  the optimizer skips every parameter and its state does not advance (an optimizer that was handed more,
  like FOP's half-batch difference, must skip parameters without ``p.grad`` alike). The step is counted.
  No
  checkpoint is saved at a skipped step. After ``max_bad_steps`` such steps in a row,
  :class:`TrainingDivergedError` stops training (a run that ends with non-finite weights or eval loss
  fails too: the pretraining job exits 1); the checkpoint saved right before the streak is then marked
  (``nonfinite_next_step.json``: its weights led into it, so no resume uses it), ``nonfinite.json`` in
  the output directory names the first bad step and the last good checkpoint, and so does the error. A logging window whose
  steps were all skipped logs its loss as NaN (the Trainer's NaN filter would log 0). (The LR schedule
  still advances on a skipped step, as it does on fp16 overflow steps.)

The summary, with the losses' verdict under the divergence rule of :mod:`hf_foco.spikes` (``loss_divergence``),
goes to ``stability.json`` in the output directory and, as a ``stability`` entry, to the
Trainer's log history.
"""

from __future__ import annotations

import json
import math
import os

import torch
from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

from ..distributed import all_finite, squared_norms
from ..distributed.wrappers import unwrap_optimizer
from ..rundir import EARLIER_NONFINITE_FILE, NONFINITE_FILE, POISONED, STABILITY_FILE
from ..spikes import DEFAULT_WINDOW, DEFAULT_ZSCORE, SpikeDetector, check_spike_settings, loss_divergence
from .checkpoints import last_checkpoint_before


class TrainingDivergedError(RuntimeError):
    """Too many consecutive optimizer steps had non-finite gradients."""


def _is_logging_step(args, state, step: int) -> bool:
    """Mirrors DefaultFlowCallback: the steps whose logs will carry the ratio."""
    if args.logging_strategy != "steps" or not state.logging_steps:
        return False
    return step % state.logging_steps == 0 or (step == 1 and args.logging_first_step)


def monitor_of(trainer) -> StabilityCallback | None:
    """The trainer's StabilityCallback, if it has one."""
    return next((cb for cb in trainer.callback_handler.callbacks if isinstance(cb, StabilityCallback)), None)


class StabilityCallback(TrainerCallback, ExportableState):
    """Grad-norm / update-ratio / loss-spike logging and a non-finite-update guard (see module docstring)."""

    def __init__(self, spike_window: int = DEFAULT_WINDOW, spike_zscore: float = DEFAULT_ZSCORE,
                 max_bad_steps: int = 5):
        check_spike_settings(spike_window, spike_zscore)
        if max_bad_steps < 1:
            raise ValueError(f"StabilityCallback needs max_bad_steps >= 1, got {max_bad_steps}.")
        self.spike_window, self.spike_zscore, self.max_bad_steps = spike_window, spike_zscore, max_bad_steps
        self.detector = SpikeDetector(spike_window, spike_zscore)
        self.skipped_steps: list[int] = []
        self.consecutive_bad = 0
        self.spikes: list[dict] = []
        self.max_grad_norm_seen: float | None = None
        self.last_update_ratio: float | None = None
        self._before: list[torch.Tensor] | None = None
        self._group_of: list[str] = []  # the group name of each tensor in _before
        self._pending_ratio: float | None = None
        self._pending_fields: dict[str, float] = {}
        self.diverged = False
        self._last_log_step = 0

    @classmethod
    def from_args(cls, args) -> StabilityCallback:
        """Settings from :class:`FocoTrainingArguments` (a plain TrainingArguments gets the defaults)."""
        names = ("spike_window", "spike_zscore", "max_bad_steps")
        return cls(**{n: getattr(args, n) for n in names if hasattr(args, n)})

    # -- the guard and the update ratio -------------------------------------------------------------

    def on_pre_optimizer_step(self, args, state, control, model=None, optimizer=None, **kwargs):
        params = [p for p in model.parameters() if p.grad is not None]
        if not params:
            return
        if not all_finite([p.grad for p in params]):
            for p in params:
                p.grad = None  # every optimizer skips a parameter without a gradient: no state change
            step = state.global_step + 1
            self.skipped_steps.append(step)
            self.consecutive_bad += 1
            if self.consecutive_bad >= self.max_bad_steps:
                good = self.diverge(args, state)
                where = (f"The last good checkpoint is {good} (none is saved after a non-finite step, nor "
                         "resumed from the one right before it)" if good else "No checkpoint before them is good")
                raise TrainingDivergedError(
                    f"Stopped at step {step}: {self.consecutive_bad} consecutive steps had non-finite gradients "
                    f"(skipped steps: {self.skipped_steps[-self.consecutive_bad:]}). {where}. Lower "
                    "--learning_rate, add warmup (--warmup_steps), check the data for empty or corrupt samples, or "
                    "raise --max_bad_steps."
                )
            return
        self.consecutive_bad = 0
        if _is_logging_step(args, state, state.global_step + 1):
            self._before = [p.detach().clone() for p in params]
            groups = optimizer.param_groups if optimizer is not None else []
            name_of = {id(p): g.get("name", f"group{i}") for i, g in enumerate(groups) for p in g["params"]}
            self._group_of = [name_of.get(id(p), "other") for p in params]

    def on_optimizer_step(self, args, state, control, model=None, optimizer=None, **kwargs):
        if self._before is None:
            return
        after = [p.detach() for p in model.parameters() if p.grad is not None]
        if len(after) == len(self._before):
            # Squared norms of the updates and of the weights, in one collective under FSDP.
            squares = squared_norms([*torch._foreach_sub(after, self._before), *self._before]).tolist()
            deltas, weights = squares[:len(after)], squares[len(after):]
            self._pending_ratio = math.sqrt(sum(deltas)) / max(math.sqrt(sum(weights)), 1e-12)
            self._pending_fields = self._group_fields(deltas, weights, [p.numel() for p in after])
        diagnostics = getattr(unwrap_optimizer(optimizer), "diagnostics", None)
        if callable(diagnostics):
            self._pending_fields.update(diagnostics())
        self._before = None

    def _group_fields(self, deltas: list[float], weights: list[float], numels: list[int]) -> dict[str, float]:
        """update_rms/<group> and update_ratio/<group> when the tensors fall into several named groups
        (``deltas`` and ``weights``: each tensor's squared norm)."""
        names = sorted(set(self._group_of))
        if len(names) < 2:
            return {}
        fields = {}
        for name in names:
            index = [i for i, n in enumerate(self._group_of) if n == name]
            delta, weight = math.sqrt(sum(deltas[i] for i in index)), math.sqrt(sum(weights[i] for i in index))
            fields[f"update_rms/{name}"] = delta / math.sqrt(sum(numels[i] for i in index))
            fields[f"update_ratio/{name}"] = delta / max(weight, 1e-12)
        return fields

    def diverge(self, args, state) -> str | None:
        """The run diverged: mark the checkpoint saved right before the current streak of non-finite steps
        (its weights led into it), write ``nonfinite.json`` and the summary; the last good checkpoint or None."""
        first_bad = self.skipped_steps[-self.consecutive_bad] if self.consecutive_bad else state.global_step + 1
        suspect = os.path.join(args.output_dir, f"checkpoint-{first_bad - 1}")
        self.diverged = True
        if state.is_world_process_zero:
            if os.path.isdir(suspect):
                with open(os.path.join(suspect, POISONED), "w") as f:
                    json.dump({"nonfinite_step": first_bad}, f)
            os.makedirs(args.output_dir, exist_ok=True)
            with open(os.path.join(args.output_dir, NONFINITE_FILE), "w") as f:
                json.dump({"first_bad_step": first_bad, "skipped_steps": self.skipped_steps,
                           "last_good_checkpoint": last_checkpoint_before(args.output_dir, first_bad)}, f, indent=2)
        self.write_summary(args, state)
        return last_checkpoint_before(args.output_dir, first_bad)

    # -- logging ----------------------------------------------------------------------------------

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "loss" not in logs:
            return
        fields: dict[str, float] = {"skipped_steps": len(self.skipped_steps)}
        since, self._last_log_step = self._last_log_step, state.global_step
        if self.skipped_steps and set(range(since + 1, state.global_step + 1)) <= set(self.skipped_steps):
            # Every step since the last log was skipped: the Trainer's NaN filter would report a loss of 0.
            logs["loss"] = fields["loss"] = float("nan")
        if self._pending_ratio is not None:
            fields["update_ratio"] = self.last_update_ratio = self._pending_ratio
            self._pending_ratio = None
        fields.update(self._pending_fields)
        self._pending_fields = {}
        grad_norm = logs.get("grad_norm")
        if grad_norm is not None and math.isfinite(grad_norm):
            self.max_grad_norm_seen = max(self.max_grad_norm_seen or 0.0, grad_norm)
        loss = logs["loss"]
        z, spike = self.detector.observe(loss) if math.isfinite(loss) else (None, False)
        if z is not None:
            fields["loss_zscore"] = z
        if spike:
            self.spikes.append({"step": state.global_step, "loss": loss, "zscore": z})
        logs.update(fields)
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(fields)

    def on_train_begin(self, args, state, control, **kwargs):
        self._last_log_step = state.global_step  # a resumed run: its first log covers the steps since here

    def on_train_end(self, args, state, control, **kwargs):
        summary = self.write_summary(args, state)
        state.log_history.append({"stability": summary, "step": state.global_step})

    # -- summary and checkpoint state -------------------------------------------------------------

    def summary(self) -> dict:
        return {
            "status": "diverged" if self.diverged else "ok",
            "skipped_steps": list(self.skipped_steps),
            "num_skipped_steps": len(self.skipped_steps),
            "loss_spikes": list(self.spikes),
            "max_grad_norm": self.max_grad_norm_seen,
            "last_update_ratio": self.last_update_ratio,
            "settings": {"spike_window": self.spike_window, "spike_zscore": self.spike_zscore,
                         "max_bad_steps": self.max_bad_steps},
        }

    def write_summary(self, args, state) -> dict:
        """Write ``stability.json``; when the run did not diverge, an earlier attempt's ``nonfinite.json`` in the
        same directory is renamed ``nonfinite.earlier.json``, so no file says this run stopped."""
        # The study reports' divergence rule, on the same logs (None: the losses did not diverge).
        summary = {**self.summary(), "loss_divergence": loss_divergence(state.log_history)}
        if state.is_world_process_zero and args.output_dir:
            os.makedirs(args.output_dir, exist_ok=True)
            with open(os.path.join(args.output_dir, STABILITY_FILE), "w") as f:
                json.dump(summary, f, indent=2)
            stale = os.path.join(args.output_dir, NONFINITE_FILE)
            if not self.diverged and os.path.isfile(stale):
                os.replace(stale, os.path.join(args.output_dir, EARLIER_NONFINITE_FILE))
        return summary

    def state(self) -> dict:
        return {"args": {"spike_window": self.spike_window, "spike_zscore": self.spike_zscore,
                         "max_bad_steps": self.max_bad_steps},
                "attributes": {"losses": self.losses, "skipped_steps": self.skipped_steps,
                               "spikes": self.spikes, "max_grad_norm_seen": self.max_grad_norm_seen}}

    @property
    def losses(self) -> list[float]:
        """The spike window's losses (a checkpointed attribute: the Trainer restores it by assignment)."""
        return list(self.detector.history)

    @losses.setter
    def losses(self, values) -> None:
        self.detector = SpikeDetector(self.spike_window, self.spike_zscore, values)
