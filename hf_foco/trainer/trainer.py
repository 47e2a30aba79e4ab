"""``FocoTrainer``: the transformers ``Trainer`` with hf_foco's optimizers, stability monitor and LM metrics.

The training loop (gradient accumulation, clipping with ``max_grad_norm``, every LR scheduler, bf16/fp16,
checkpoints and resume) is transformers' own. What differs:

* Optimizer: for a registry ``--optim`` the parameters are grouped by :func:`hf_foco.optim.param_groups`
  with ``args.weight_decay_policy`` (nanoGPT's by default: decay on >= 2-D weights only, so embeddings
  are decayed and biases/LayerNorm gains are not) and the optimizer is built with
  :meth:`FocoTrainingArguments.optimizer_kwargs`. Native names take the stock path.
* Optimizers the registry marks as needing more than gradients (:mod:`hf_foco.optim.registry`): for
  ``needs_layer_hooks`` the trainer attaches the prepared model once and, at the first micro-batch of
  each optimizer step the optimizer says is due, hands it that micro-batch for its curvature. For
  ``needs_half_batch_grads`` :meth:`training_step` runs the *half-batch step*: each micro-batch is cut in
  two halves (:func:`split_in_halves`), each half has its own forward and backward into its own gradient
  buffer (swapped into ``p.grad``, so DDP averages each half over ranks in its own all-reduce, at no
  extra cost), and ``p.grad`` ends as the sum of both, the full-batch gradient that the loop clips, logs
  and steps with. At the last micro-batch of the step the optimizer receives g1 − g2 (each half's
  buffer divided by its share of the step's loss weight). Clipping, scheduler and ``step()`` stay the
  Trainer's.
* ``--gradient_compression NAME``: before the first step of a multi-process DDP run the trainer registers
  that communication hook (:func:`hf_foco.distributed.register_compression`, on the DDP module also under
  ``--torch_compile``'s wrapper) and adds ``comm_bytes`` and
  ``comm_ratio`` (bytes sent / an fp32 all-reduce's) to the logs. A single process has nothing to compress
  (a warning says so); FSDP has no DDP hook (a clear error says so).
* ``--tokens_per_step``: the first micro-batch must add up to it (:mod:`.batch`).
* Defaults for every model: a :class:`StabilityCallback` (unless ``--stability_monitor false``), the top
  Hessian eigenvalue with ``--hessian_every_n_steps``, a ``wall_time_s`` stamp on every log entry.
  ``create_model_card`` / ``push_to_hub`` take transformers' arguments and write and upload a card that names
  the optimizer (:mod:`hf_foco.artifacts`) with the run record beside the stock result files.
* Defaults for a causal LM only (:func:`~.task.is_causal_lm`: the model's class, or ``--causal_lm``): next-token
  accuracy and perplexity from the packaged evaluate module when no ``compute_metrics`` is given, tokens
  seen counted (``--include_num_input_tokens_seen auto``) and the pretraining card. Any other model keeps
  transformers' behaviour there; K-FAC and FOP, whose curvature is a causal LM's next-token Fisher, refuse it.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from transformers import Trainer, TrainerCallback, TrainerState
from transformers.loss.loss_utils import ForCausalLMLoss
from transformers.trainer import SCHEDULER_NAME
from transformers.utils import logging

from ..distributed import all_finite, find_ddp, register_compression, unwrap_optimizer
from ..optim import create_optimizer, get_optimizer, spec_of
from ..rundir import POISONED, TRAINER_STATE_FILE, WALL_TIME_KEY, write_resume_record
from .arguments import is_registry_optim
from .batch import check_tokens_per_step
from .checkpoints import refuse_changed_settings, refuse_incomplete_resume, resume_record, save_failure
from .evaluation import LMMetrics, preprocess_logits_for_lm_metrics
from .record import INFER, write_run_artifacts
from .sharpness import HessianEigenvalueCallback
from .stability import StabilityCallback, monitor_of
from .task import is_causal_lm, model_task

logger = logging.get_logger(__name__)


def split_in_halves(inputs: dict) -> tuple[tuple[dict, float], tuple[dict, float]]:
    """The micro-batch cut in two along dim 0, each half with its share of the examples.

    Anything without the batch dimension (scalars, non-tensors) goes to both halves. Rule for an odd
    micro-batch (the last, short batch of an epoch without ``dataloader_drop_last``): halves of n//2 and
    n − n//2 examples, each loss weighted by its share, so the full-batch gradient stays exact. A
    micro-batch of one example cannot be split.
    """
    sizes = [v.shape[0] for v in inputs.values() if isinstance(v, torch.Tensor) and v.dim() > 0]
    if not sizes:
        raise ValueError("The half-batch step found no batch dimension in the inputs (no tensor with dim >= 1).")
    n = sizes[0]
    if n < 2:
        raise ValueError(f"The half-batch step splits every micro-batch into two halves, but this one holds {n} "
                         "example: use per_device_train_batch_size >= 2 (even) and --dataloader_drop_last true.")

    def cut(part: slice) -> dict:
        return {k: v[part] if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == n else v
                for k, v in inputs.items()}

    return (cut(slice(0, n // 2)), (n // 2) / n), (cut(slice(n // 2, n)), (n - n // 2) / n)


class CheckpointSaveError(RuntimeError):
    """A checkpoint could not be written; the message names the last good one."""


class WallClock(TrainerCallback):
    """Stamps ``wall_time_s`` (seconds since training began) on each log entry as it is written, so curves can
    be drawn against wall time, evaluation pauses included (the Trainer logs no timestamps)."""

    def __init__(self):
        self.start: float | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.perf_counter()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.start is not None and state.log_history:
            state.log_history[-1][WALL_TIME_KEY] = time.perf_counter() - self.start


class FocoTrainer(Trainer):
    """``Trainer`` that understands ``--optim <hf_foco name>`` (see the module docstring)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.causal_lm = is_causal_lm(self.model, getattr(self.args, "causal_lm", None))
        self._check_task()
        if self.causal_lm and self.compute_metrics is None and self.preprocess_logits_for_metrics is None:
            self.compute_metrics, self.preprocess_logits_for_metrics = LMMetrics(), preprocess_logits_for_lm_metrics
        if self.args.include_num_input_tokens_seen == "auto":
            self.args.include_num_input_tokens_seen = "all" if self.causal_lm else "no"
        if getattr(self.args, "stability_monitor", True) and monitor_of(self) is None:
            # First in line, so the fields it adds to the logs reach the reporting callbacks too.
            self.callback_handler.callbacks.insert(0, StabilityCallback.from_args(self.args))
        if getattr(self.args, "hessian_every_n_steps", 0):
            self.add_callback(HessianEigenvalueCallback(self.args.hessian_every_n_steps, self.args.hessian_iterations,
                                                        self.args.hessian_batch_size))
        self.add_callback(WallClock())
        self._attached_optimizer = None
        self._curvature_step: int | None = None  # the optimizer step whose curvature batch was handed over
        self._halves: dict[torch.Tensor, list] = {}  # parameter -> [half-1 buffer, half-2 buffer]
        self._half_shares = [0.0, 0.0]  # each half's share of the step's loss weight so far
        self.compression = None  # the CompressionState once the hook is registered
        self._compression_checked = False
        self._batch_checked = False
        if not self._loss_shifts_labels and getattr(self.model, "loss_function", None) is ForCausalLMLoss:
            # A config-built causal LM has loss_type None, so Trainer counts the unshifted labels and divides
            # the summed loss by T tokens per sequence instead of T-1: every reported loss would be (T-1)/T
            # too small (6 % at T=16, 0.1 % at T=1024). Its loss function is ForCausalLMLoss all the same.
            self._loss_shifts_labels = True

    @property
    def stability(self) -> StabilityCallback | None:
        return monitor_of(self)

    def _check_task(self) -> None:
        """Refuse an optimizer whose curvature assumes a causal LM (K-FAC, FOP) for any other model."""
        spec = get_optimizer(self.args.optim) if is_registry_optim(self.args.optim) else None
        if self.causal_lm or spec is None or not (spec.needs_layer_hooks or spec.needs_half_batch_grads):
            return
        task = model_task(self.model)
        raise ValueError(f"--optim {spec.name} preconditions with a causal LM's next-token Fisher, and "
                         f"{type(self.model).__name__} is {f'a {task} model' if task else 'not a causal LM'}: use "
                         "an elementwise optimizer (foco, focus, signum, lion, adamw) or one of transformers', or "
                         "--causal_lm true if the model does predict the next token.")

    def create_optimizer(self, model=None):
        if self.optimizer is None and is_registry_optim(self.args.optim):
            self.optimizer = create_optimizer(self.args.optim, self.model if model is None else model,
                                              weight_decay_policy=self.args.weight_decay_policy,
                                              **self.args.optimizer_kwargs())
        return super().create_optimizer(model)

    def _register_compression(self, model) -> None:
        name = self.args.gradient_compression
        if name is None or self._compression_checked:
            return
        self._compression_checked = True
        if self.args.world_size == 1 and find_ddp(model) is None:
            logger.warning(f"--gradient_compression {name} has no effect in a single-process run (nothing is "
                           "communicated); launch with several processes under DDP to use it.")
            return
        self.compression = register_compression(model, name)

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        if self.compression is not None:
            logs = {**logs, "comm_bytes": self.compression.bytes_sent, "comm_ratio": self.compression.ratio}
        super().log(logs, *args, **kwargs)

    # -- checkpoints -----------------------------------------------------------------------------------------

    def resume_record(self) -> dict:
        """What each checkpoint records to compare on resume (:mod:`.checkpoints`): the optimizer, the batch and
        schedule, and the ``run_settings`` (model and data: :func:`.checkpoints.settings_record`) a job sets on
        the trainer."""
        return resume_record(self.args, getattr(self, "run_settings", None))

    def _save_checkpoint(self, model, trial) -> None:
        """Never save a checkpoint whose step was skipped as non-finite or whose weights are not finite: the
        last checkpoint stays the last good state (:mod:`.stability`)."""
        monitor = self.stability
        bad = monitor is not None and monitor.consecutive_bad > 0
        if bad or not all_finite([p.detach() for p in self.model.parameters()]):
            logger.warning(f"Not saving a checkpoint at step {self.state.global_step}: "
                           f"{'the step was skipped as non-finite' if bad else 'the weights are not finite'}.")
            return
        stale = Path(self.args.output_dir) / f"checkpoint-{self.state.global_step}" / POISONED
        if self.is_world_process_zero() and stale.is_file():
            stale.unlink()  # a resumed run rewrites this step with weights that did not diverge
        try:
            super()._save_checkpoint(model, trial)
        except OSError as err:  # a full disk, a directory made read-only: stop, naming what is still good
            raise CheckpointSaveError(save_failure(self.args.output_dir, self.state.global_step, err)) from err

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        super()._save_optimizer_and_scheduler(output_dir)
        if self.is_world_process_zero():
            write_resume_record(output_dir, self.resume_record())

    def _load_callback_state(self) -> None:
        """transformers restores callback state only with ``--restore_callback_states_from_checkpoint``; the
        stability monitor's record (skipped steps, largest gradient norm, spikes and their loss window)
        always survives a resume, so a resumed run's summary covers the whole run."""
        if self.args.restore_callback_states_from_checkpoint:
            return super()._load_callback_state()
        monitor = self.stability
        saved = self.state.stateful_callbacks.get(type(monitor).__name__) if monitor is not None else None
        if saved:
            for name, value in (saved[0] if isinstance(saved, list) else saved).get("attributes", {}).items():
                setattr(monitor, name, value)

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        """transformers' load, refusing what it would do silently: a checkpoint without optimizer or scheduler
        state, or with another optimizer's. ``--reset_optimizer_state`` keeps the fresh optimizer and moves
        the loaded schedule onto its learning rate."""
        if checkpoint is None:
            return
        reset = getattr(self.args, "reset_optimizer_state", False)
        refuse_incomplete_resume(checkpoint, reset)
        refuse_changed_settings(checkpoint, {"optimizer": self.resume_record().get("optimizer")}, reset)
        if not reset:
            return super()._load_optimizer_and_scheduler(checkpoint)
        logger.warning(f"--reset_optimizer_state: resuming {checkpoint}'s weights and step with a fresh optimizer "
                       "state; the learning-rate schedule continues from its step at this run's learning rate.")
        self.lr_scheduler.load_state_dict(torch.load(Path(checkpoint) / SCHEDULER_NAME, weights_only=True))
        if hasattr(self.lr_scheduler, "base_lrs"):
            self.lr_scheduler.base_lrs = [group["initial_lr"] for group in self.optimizer.param_groups]

    def load_finished(self, checkpoint: str) -> None:
        """Take up a run that already reached its last step at ``checkpoint`` without training another step: its
        weights, its state (step and log history) and the callbacks' state, so that evaluating and saving then
        end the run as if ``train()`` had just stopped there."""
        self._load_from_checkpoint(checkpoint)
        self.state = TrainerState.load_from_json(str(Path(checkpoint) / TRAINER_STATE_FILE))
        self._load_callback_state()

    # -- the training step ----------------------------------------------------------------------------------

    def training_step(self, model, inputs, num_items_in_batch=None):
        self._register_compression(model)
        if not self._batch_checked:
            self._batch_checked = True
            check_tokens_per_step(self.args, inputs)
        optimizer = unwrap_optimizer(self.optimizer)
        spec = spec_of(optimizer)
        if spec is None or not (spec.needs_layer_hooks or spec.needs_half_batch_grads):
            return super().training_step(model, inputs, num_items_in_batch)
        if spec.needs_layer_hooks:
            self._feed_curvature(optimizer, model, inputs)
        if spec.needs_half_batch_grads:
            return self._half_batch_step(optimizer, model, inputs, num_items_in_batch)
        return super().training_step(model, inputs, num_items_in_batch)

    def _feed_curvature(self, optimizer, model, inputs) -> None:
        """Attach the prepared model once; hand the first micro-batch of a due step to the curvature."""
        if self._attached_optimizer is not optimizer:
            optimizer.attach(model)
            self._attached_optimizer = optimizer
        if self._curvature_step != self.state.global_step:
            self._curvature_step = self.state.global_step
            if optimizer.curvature_due:
                model.train()
                optimizer.update_curvature(self._prepare_inputs(inputs))

    def _half_batch_step(self, optimizer, model, inputs, num_items_in_batch) -> torch.Tensor:
        """Two forwards and backwards, one per half, each into its own gradient buffer (module docstring)."""
        if (ddp := find_ddp(model)) is not None and ddp.gradient_as_bucket_view:
            raise ValueError("The half-batch step swaps p.grad between two buffers, which DDP's "
                             "gradient_as_bucket_view=True forbids: leave gradient_as_bucket_view off.")
        params = optimizer.half_batch_params
        inputs = self._prepare_inputs(inputs)
        loss = 0.0
        for index, (half, share) in enumerate(split_in_halves(inputs)):
            for p in params:
                p.grad = self._halves.setdefault(p, [None, None])[index]
            loss = loss + self._half_backward(model, half, num_items_in_batch, share)
            self._half_shares[index] += share / self.current_gradient_accumulation_steps
            for p in params:
                self._halves[p][index] = p.grad
        for p in params:
            first, second = self._halves[p]
            p.grad = second if first is None else first if second is None else first + second
        if self.accelerator.sync_gradients:  # the last micro-batch of the optimizer step
            (s1, s2), halves = self._half_shares, self._halves
            optimizer.receive_half_batch_difference([
                None if a is None or b is None else a / s1 - b / s2 for a, b in (halves[p] for p in params)])
            self._halves, self._half_shares = {}, [0.0, 0.0]
        return loss

    def _half_backward(self, model, inputs, num_items_in_batch, share: float) -> torch.Tensor:
        """Trainer.training_step's loss and backward for a piece holding ``share`` of the micro-batch."""
        model.train()
        with self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs, num_items_in_batch=num_items_in_batch)
        if self.args.n_gpu > 1:
            loss = loss.mean()
        scaled = self.loss_is_scaled_for_ga
        if scaled is None:
            scaled = (self.model_accepts_loss_kwargs and num_items_in_batch is not None) or \
                self.compute_loss_func is not None
        if not scaled:  # a mean over the piece: weigh it by the piece's share of the micro-batch
            loss = loss * share / self.current_gradient_accumulation_steps
        self.accelerator.backward(loss)
        return loss.detach()

    # -- the finished run -----------------------------------------------------------------------------------

    def create_model_card(self, language: str | None = None, license: str | None = None,
                          tags: str | list[str] | None = None, model_name: str | None = None,
                          finetuned_from=INFER, tasks: str | list[str] | None = None,
                          dataset_tags: str | list[str] | None = None, dataset: str | list[str] | None = None,
                          dataset_args: str | list[str] | None = None, *, dataset_info: dict | None = None,
                          repo_id: str | None = None) -> None:
        """Write the run record and the pretraining card (:func:`write_run_artifacts`) instead of transformers'
        fine-tuning card, taking the same arguments with the same meaning (:func:`card_metadata`; an explicit
        ``finetuned_from=None`` means trained from scratch). ``dataset_info`` describes the data in the card's
        Data section; ``repo_id`` is the repository its loading snippet names."""
        if self.is_world_process_zero():
            card = dict(language=language, license=license, tags=tags, model_name=model_name, tasks=tasks,
                        dataset_tags=dataset_tags, dataset=dataset, dataset_args=dataset_args)
            if finetuned_from is not INFER:
                card["finetuned_from"] = finetuned_from
            write_run_artifacts(self, dataset_info=dataset_info, repo_id=repo_id, **card)

    def push_to_hub(self, commit_message: str | None = "End of training", blocking: bool = True,
                    token: str | None = None, revision: str | None = None, private: bool | None = None,
                    dataset_info: dict | None = None, **kwargs):
        """Upload the run as transformers' ``push_to_hub`` does (the same arguments; ``kwargs`` go to
        :meth:`create_model_card`), with hf_foco's card (a subclass's own ``create_model_card``, TRL's, writes
        its card instead) and exactly the files :func:`push_run` uploads.

        As transformers' push: the ``on_push_begin`` callbacks run, the repository is created from
        ``--hub_model_id`` (default: the output folder's name), the model is saved, ``model_name`` defaults to
        the repository's name, the model's tags join the card's, and an upload still in flight (from
        ``--hub_strategy every_save``) is waited for before this one starts. Offline it fails before
        anything is written. Returns the ``CommitInfo`` (a ``Future`` of it with ``blocking=False``).
        """
        from ..artifacts.push import ensure_online, push_run

        ensure_online(self.args.output_dir, self.args.hub_model_id or Path(self.args.output_dir).absolute().name)
        self.callback_handler.on_push_begin(self.args, self.state, self.control)
        token = token if token is not None else self.args.hub_token
        if self.hub_model_id is None:
            self.init_hf_repo(token=token, private=private)
        if kwargs.get("model_name") is None and self.args.should_save:
            kwargs["model_name"] = (self.args.hub_model_id or Path(self.args.output_dir).name).split("/")[-1]
        self.save_model(_internal_call=True)
        if not self.is_world_process_zero():
            return None
        if type(self).create_model_card is FocoTrainer.create_model_card:
            self.create_model_card(dataset_info=dataset_info, repo_id=self.hub_model_id, **kwargs)
        else:  # a subclass writes its own card (TRL's trainers do), with its own arguments
            self.create_model_card(**kwargs)
        self._finish_current_push()
        return push_run(self.args.output_dir, repo_id=self.hub_model_id, token=token, create=False,
                        revision=revision if revision is not None else self.args.hub_revision,
                        commit_message=commit_message, write_artifacts=False, blocking=blocking)
