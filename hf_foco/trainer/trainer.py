"""``FocoTrainer``: the transformers ``Trainer`` with hf_foco's optimizers, stability monitor and LM metrics.

Only three things differ from ``Trainer``; the training loop (gradient accumulation, clipping with
``max_grad_norm``, every LR scheduler, bf16/fp16, checkpoints and resume) is transformers' own.

* Optimizer: for a registry ``--optim`` the parameters are grouped by
  :func:`hf_foco.optim.param_groups` with ``args.weight_decay_policy`` (nanoGPT's by default: decay on
  >= 2-D weights only, so embeddings are decayed and biases/LayerNorm gains are not) and the optimizer is
  built with :meth:`FocoTrainingArguments.optimizer_kwargs`. Native names take the stock path.
* Optimizers with special training steps: those that need layer hooks are built with ``model=``; before
  their first step the trainer calls ``optimizer.attach(prepared_model)``; an optimizer with a
  ``training_step(trainer, model, inputs, num_items_in_batch)`` method replaces the forward/backward of
  :meth:`training_step` (FOP's two half-batch gradients). Clipping, scheduler and ``step()`` stay the
  Trainer's. When the stability monitor skips a non-finite step it sets every ``p.grad`` to None and
  calls the optimizer's ``skip_step()`` if it has one (to drop gradients it stashed itself).
* ``--gradient_compression NAME``: before the first step of a multi-process DDP run the trainer registers
  that communication hook (:func:`hf_foco.distributed.register_compression`) and adds ``comm_bytes`` and
  ``comm_ratio`` (bytes sent / an fp32 all-reduce's) to the logs. A single process has nothing to compress
  (a warning says so); FSDP has no DDP hook (a clear error says so).
* Defaults: a :class:`StabilityCallback` (unless ``--stability_monitor false``) and, when no
  ``compute_metrics`` is given, next-token accuracy and perplexity from the packaged evaluate module.
  ``create_model_card`` / ``push_to_hub`` write and upload a pretraining card (see :mod:`.push`).
"""

from __future__ import annotations

import torch
from accelerate.optimizer import AcceleratedOptimizer
from transformers import Trainer
from transformers.loss.loss_utils import ForCausalLMLoss
from transformers.utils import logging

from ..distributed import register_compression
from ..optim import create_optimizer
from .arguments import is_registry_optim
from .evaluation import LMMetrics, preprocess_logits_for_lm_metrics
from .stability import StabilityCallback, monitor_of

logger = logging.get_logger(__name__)


def unwrap_optimizer(optimizer):
    """The torch optimizer under accelerate's wrapper (which passes no custom attribute through)."""
    return optimizer.optimizer if isinstance(optimizer, AcceleratedOptimizer) else optimizer


class FocoTrainer(Trainer):
    """``Trainer`` that understands ``--optim <hf_foco name>`` (see the module docstring)."""

    def __init__(self, *args, compute_metrics=None, preprocess_logits_for_metrics=None, **kwargs):
        if compute_metrics is None and preprocess_logits_for_metrics is None:
            compute_metrics, preprocess_logits_for_metrics = LMMetrics(), preprocess_logits_for_lm_metrics
        super().__init__(*args, compute_metrics=compute_metrics,
                         preprocess_logits_for_metrics=preprocess_logits_for_metrics, **kwargs)
        if getattr(self.args, "stability_monitor", True) and monitor_of(self) is None:
            # First in line, so the fields it adds to the logs reach the reporting callbacks too.
            self.callback_handler.callbacks.insert(0, StabilityCallback.from_args(self.args))
        self._attached_optimizer = None
        self.compression = None  # the CompressionState once the hook is registered
        self._compression_checked = False
        if not self._loss_shifts_labels and getattr(self.model, "loss_function", None) is ForCausalLMLoss:
            # A config-built causal LM has loss_type None, so Trainer counts the unshifted labels and divides
            # the summed loss by T tokens per sequence instead of T-1: every reported loss would be (T-1)/T
            # too small (6 % at T=16, 0.1 % at T=1024). Its loss function is ForCausalLMLoss all the same.
            self._loss_shifts_labels = True

    @property
    def stability(self) -> StabilityCallback | None:
        return monitor_of(self)

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
        if self.args.world_size == 1 and not isinstance(model, torch.nn.parallel.DistributedDataParallel):
            logger.warning(f"--gradient_compression {name} has no effect in a single-process run (nothing is "
                           "communicated); launch with several processes under DDP to use it.")
            return
        self.compression = register_compression(model, name)

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        if self.compression is not None:
            logs = {**logs, "comm_bytes": self.compression.bytes_sent, "comm_ratio": self.compression.ratio}
        super().log(logs, *args, **kwargs)

    def training_step(self, model, inputs, num_items_in_batch=None):
        self._register_compression(model)
        optimizer = unwrap_optimizer(self.optimizer)
        if self._attached_optimizer is not optimizer:
            if hasattr(optimizer, "attach"):
                optimizer.attach(model)
            self._attached_optimizer = optimizer
        if hasattr(optimizer, "training_step"):
            model.train()
            return optimizer.training_step(self, model, inputs, num_items_in_batch)
        return super().training_step(model, inputs, num_items_in_batch)

    def create_model_card(self, *args, dataset_info: dict | None = None, **kwargs):
        """The pretraining card of :func:`write_run_artifacts` (transformers' would call it a fine-tune)."""
        from .artifacts import write_run_artifacts

        if self.is_world_process_zero():
            write_run_artifacts(self, dataset_info=dataset_info)

    def push_to_hub(self, commit_message: str | None = "End of training", blocking: bool = True,
                    token: str | None = None, revision: str | None = None, private: bool | None = None,
                    dataset_info: dict | None = None, **kwargs):
        """Save, write the run's artifacts and upload exactly the files :func:`push_run` lists."""
        from .artifacts import write_run_artifacts
        from .push import ensure_online, push_run

        repo_id = self.args.hub_model_id or self.hub_model_id
        if repo_id is None:
            raise ValueError("push_to_hub needs a repository: pass --hub_model_id USER/NAME.")
        ensure_online(self.args.output_dir, repo_id)
        self.save_model(_internal_call=True)
        if not self.is_world_process_zero():
            return None
        write_run_artifacts(self, dataset_info=dataset_info, repo_id=repo_id)
        return push_run(self.args.output_dir, repo_id=repo_id, token=token or self.args.hub_token,
                        private=self.args.hub_private_repo if private is None else private,
                        revision=revision or self.args.hub_revision, commit_message=commit_message,
                        write_artifacts=False)
