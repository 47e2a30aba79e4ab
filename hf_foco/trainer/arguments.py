"""``FocoTrainingArguments``: ``TrainingArguments`` whose ``--optim`` also accepts hf_foco's registry.

transformers turns ``optim`` into an enum, so ``--optim foco`` dies in argparse and
``TrainingArguments(optim="foco")`` in ``__post_init__``. This subclass redeclares ``optim`` as a string
whose argparse ``choices`` is a live view of both name sets (names registered after import included) and
hides a registry name from the base class's enum check.

Name clashes: a native transformers name always means the native optimizer, so existing scripts keep
their behaviour; a registry entry that shadows a native name is only reachable through
:func:`hf_foco.optim.create_optimizer`. (``adamw`` is a registry name: transformers' is ``adamw_torch``.)

A registry optimizer's hyperparameters come from the usual fields, ``--optim_args`` and ``--optim_kwargs``
in the order :mod:`hf_foco.optim.hyperparameters` describes. After ``__post_init__`` the usual fields hold
the values actually used, so logs and model cards report them.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import TrainingArguments
from transformers.hf_argparser import string_to_bool
from transformers.training_args import OptimizerNames

from ..distributed import COMPRESSION_HOOKS, sharding_in_use, sharding_refusal
from ..hints import did_you_mean, parse_key_values
from ..optim import DECAY_POLICIES, get_optimizer, is_registered, list_optimizers
from ..optim.hyperparameters import check_by_construction, field_defaults, resolve_hyperparameters
from ..optim.validation import check_choice
from ..spikes import DEFAULT_WINDOW, DEFAULT_ZSCORE, check_spike_settings
from .sharpness import DEFAULT_BATCH_SIZE, DEFAULT_ITERATIONS

NATIVE_OPTIMIZERS: tuple[str, ...] = tuple(o.value for o in OptimizerNames)
# transformers' own defaults for the fields this class leaves unset (None) until it knows the optimizer.
_NATIVE_DEFAULTS = {"learning_rate": 5e-5, "weight_decay": 0.0, "adam_beta1": 0.9, "adam_beta2": 0.999}


def is_registry_optim(name) -> bool:
    """True when ``name`` selects an hf_foco optimizer (a native transformers name never does)."""
    name = getattr(name, "value", name)
    return isinstance(name, str) and name not in NATIVE_OPTIMIZERS and is_registered(name)


class OptimChoices:
    """Every valid ``--optim`` value, read live: transformers' names, then the registry's."""

    def __contains__(self, name) -> bool:
        return getattr(name, "value", name) in NATIVE_OPTIMIZERS or is_registry_optim(name)

    def __iter__(self):
        return iter([*NATIVE_OPTIMIZERS, *(s.name for s in list_optimizers() if s.name not in NATIVE_OPTIMIZERS)])

    def __repr__(self) -> str:
        return f"OptimChoices({list(self)})"


def unknown_optim_message(name) -> str:
    """What an unknown ``--optim`` value is told: the closest name, then where every name is listed."""
    ours = [s.name for s in list_optimizers() if s.name not in NATIVE_OPTIMIZERS]
    return (f"invalid choice: {name!r}.{did_you_mean(name, OptimChoices())} Choose one of hf_foco's optimizers "
            f"({', '.join(ours)}; `hf-foco optimizers` describes them) or of transformers' "
            f"({', '.join(NATIVE_OPTIMIZERS)}).")


class OptimName(str):
    """The type of ``--optim`` on the command line: argparse calls it on the text, so an unknown name is
    refused with the closest known one (argparse's own ``choices`` check only lists them all).

    Calling it returns the plain ``str`` (it only checks); ``HfArgumentParser`` uses a field's type as the
    argparse ``type``, which is why ``optim`` is annotated with it.
    """

    def __new__(cls, name):
        if name not in OptimChoices():
            raise argparse.ArgumentTypeError(unknown_optim_message(name))
        return str(getattr(name, "value", name))


class TokensSeen(str):
    """The type of ``--include_num_input_tokens_seen``: auto, all, non_padding, no, or a yes/no word (yes: all).

    (transformers declares the field ``str | bool``, which its parser turns into a plain boolean.)
    """

    CHOICES = ("auto", "all", "non_padding", "no")

    def __new__(cls, value):
        if value in cls.CHOICES:
            return str(value)
        try:
            return "all" if string_to_bool(value) else "no"
        except argparse.ArgumentTypeError:
            raise argparse.ArgumentTypeError(f"invalid choice: {value!r}: choose one of {', '.join(cls.CHOICES)} "
                                             "(or true/false).") from None


@dataclass
class FocoTrainingArguments(TrainingArguments):
    """``TrainingArguments`` plus hf_foco's optimizers, parameter grouping and stability monitor."""

    _VALID_DICT_FIELDS = [*TrainingArguments._VALID_DICT_FIELDS, "optim_kwargs"]

    optim: OptimName = field(
        default=TrainingArguments.default_optim,
        metadata={"help": "Optimizer: a transformers name or an hf_foco registry name (a native name wins a "
                          "clash). Choices: %(choices)s.",
                  "choices": OptimChoices()},
    )
    learning_rate: float | None = field(
        default=None, metadata={"help": "Peak learning rate; unset: the registry default for hf_foco "
                                        "optimizers, 5e-5 for transformers' own."})
    weight_decay: float | None = field(
        default=None, metadata={"help": "Weight decay of the decayed group; unset: the registry default for "
                                        "hf_foco optimizers, 0 for transformers' own."})
    adam_beta1: float | None = field(
        default=None, metadata={"help": "betas[0] for optimizers that take betas; unset: their default."})
    adam_beta2: float | None = field(
        default=None, metadata={"help": "betas[1] for optimizers that take betas; unset: their default."})
    optim_kwargs: dict | str | None = field(
        default=None, metadata={"help": "Typed hyperparameters of an hf_foco optimizer as a JSON dict, e.g. "
                                        "'{\"betas\": [0.9, 0.99], \"gamma\": 0.2}'; applied after --optim_args."})
    weight_decay_policy: str = field(
        default="nanogpt", metadata={"help": "Which parameters hf_foco optimizers decay: nanogpt (>= 2-D weights), "
                                             "no_bias_or_norm (transformers' rule) or all.",
                                     "choices": tuple(DECAY_POLICIES)})
    include_num_input_tokens_seen: TokensSeen = field(
        default="auto", metadata={"help": "Count input tokens: all, non_padding, no, or auto (FocoTrainer: all for "
                                           "a causal LM, whose model card reports the tokens seen; no otherwise)."})
    causal_lm: bool | None = field(default=None, metadata={
        "help": "Train as a causal LM: next-token accuracy and perplexity when the script passes no "
                "compute_metrics, tokens seen, and the pretraining model card. Unset: true when the model's class is "
                "a transformers causal LM (an AutoModelForCausalLM class), stock behaviour otherwise."})
    license: str | None = field(default=None, metadata={
        "help": "The trained model's license on its model card, a Hub license id (e.g. apache-2.0); a "
                "create_model_card(license=...) call takes precedence."})
    stability_monitor: bool = field(
        default=True, metadata={"help": "Log grad norm, update/weight ratio and loss spikes; skip non-finite "
                                        "updates (see hf_foco.trainer.stability)."})
    spike_window: int = field(default=DEFAULT_WINDOW, metadata={
        "help": "Trailing logged losses the spike z-score uses (hf_foco.spikes)."})
    spike_zscore: float = field(default=DEFAULT_ZSCORE, metadata={
        "help": "A logged loss this many standard deviations above the trailing mean is a spike."})
    max_bad_steps: int = field(default=5, metadata={"help": "Stop after this many consecutive steps with "
                                                            "non-finite gradients."})
    overwrite_output_dir: bool = field(default=False, metadata={
        "help": "Start over in an --output_dir that holds checkpoints of an earlier run, removing them first "
                "(without it a rerun resumes from the latest complete one, and never overwrites one)."})
    reset_optimizer_state: bool = field(default=False, metadata={
        "help": "Resume the weights and the step count of a checkpoint but start the optimizer state afresh with "
                "this run's optimizer and learning rate (needed when either changed, or the checkpoint has no "
                "optimizer state)."})
    tokens_per_step: int | None = field(
        default=None, metadata={"help": "Tokens per optimizer step over all processes (the global batch), for the "
                                        "pretraining job: it sets gradient_accumulation_steps to tokens_per_step / "
                                        "(processes x per_device_train_batch_size x block_size), so a recipe trains "
                                        "the same batch on any number of GPUs (hf_foco.trainer.batch); other scripts "
                                        "must set the matching accumulation (checked at the first step). Unset: "
                                        "gradient_accumulation_steps as given."})
    gradient_compression: str | None = field(
        default=None, metadata={"help": "DDP gradient compression hook (multi-process DDP only): none (fp32, with "
                                        "byte counting), bf16, sign (1-bit signs with error feedback) or powersgd. "
                                        "See hf_foco.distributed.compression.",
                                "choices": tuple(COMPRESSION_HOOKS)})
    hessian_every_n_steps: int = field(default=0, metadata={
        "help": "Log the top Hessian eigenvalue of a fixed eval batch every N steps (0: off; hf_foco.trainer.sharpness)."})
    hessian_iterations: int = field(default=DEFAULT_ITERATIONS, metadata={
        "help": "Lanczos iterations (Hessian-vector products) per top-Hessian-eigenvalue measurement."})
    hessian_batch_size: int = field(default=DEFAULT_BATCH_SIZE, metadata={
        "help": "Rows of the fixed eval batch the Hessian eigenvalue is measured on."})

    def __post_init__(self):
        self._check_counts()
        name = getattr(self.optim, "value", self.optim)
        if name not in OptimChoices():
            raise ValueError(f"Unknown optimizer --optim {name!r}.{did_you_mean(name, OptimChoices())} Run `hf-foco "
                             "optimizers` for hf_foco's, or see transformers' OptimizerNames.")
        self._check_monitor_settings()
        if self.push_to_hub:
            from ..artifacts.push import ensure_online

            ensure_online(self.output_dir, self.hub_model_id or "USER/NAME")
        if not is_registry_optim(name):
            if self.optim_kwargs is not None:
                raise ValueError(f"--optim_kwargs configures hf_foco optimizers only; for {name!r} use --optim_args.")
            for key, value in _NATIVE_DEFAULTS.items():
                if getattr(self, key) is None:
                    setattr(self, key, value)
            if not math.isfinite(self.learning_rate):
                raise ValueError(f"--learning_rate {self.learning_rate} is not a finite number: pass one like 3e-4.")
            super().__post_init__()
            self._check_native_optimizer(name)
            return
        spec = get_optimizer(name)
        self._check_set_up_for(spec)
        if "betas" not in spec.hyperparameter_names() and (self.adam_beta1, self.adam_beta2) != (None, None):
            raise ValueError(f"Optimizer {name!r} takes no betas: drop --adam_beta1/--adam_beta2 (its settings: "
                             f"{', '.join(sorted(spec.hyperparameter_names()))}; set them with --optim_args).")
        for key, value in field_defaults(spec).items():
            if getattr(self, key) is None:
                setattr(self, key, value)
        if self.learning_rate is None:
            raise ValueError(f"Optimizer {name!r} has no default learning rate: pass --learning_rate.")
        self.optim = OptimizerNames.ADAMW_TORCH.value  # the base class only knows its enum
        try:
            super().__post_init__()
        finally:
            self.optim = name
        if self.optim_kwargs is not None and not isinstance(self.optim_kwargs, dict):
            raise ValueError(f"--optim_kwargs must be a JSON object like '{{\"gamma\": 0.2}}', got {self.optim_kwargs!r}.")
        kwargs = self.optimizer_kwargs()
        check_by_construction(spec, kwargs)
        self.learning_rate = kwargs["lr"]
        self.weight_decay = kwargs.get("weight_decay", 0.0)
        if "betas" in kwargs:
            self.adam_beta1, self.adam_beta2 = kwargs["betas"][:2]

    def _check_native_optimizer(self, name: str) -> None:
        """A transformers optimizer's settings, checked now as a registry optimizer's are: every ``--optim_args``
        key transformers would not pass on to it is refused (it reads them for a few optimizers only, and
        silently drops the rest), and torch's own optimizers are built on a dummy parameter so their range
        checks (a beta of 1.5) fail here, not in the first step. Optimizers transformers cannot resolve here
        (an optional package missing, a model needed) are left to transformers."""
        from transformers import Trainer

        def resolve(optim_args):
            original, self.optim_args = self.optim_args, optim_args
            try:
                return Trainer.get_optimizer_cls_and_kwargs(self)
            finally:
                self.optim_args = original

        try:
            cls, kwargs = resolve(self.optim_args)
            pairs = parse_key_values(self.optim_args, "--optim_args", "key=value")
            ignored = [key for key in pairs if resolve(",".join(f"{k}={v}" for k, v in pairs.items() if k != key))
                       == (cls, kwargs)]
        except Exception:  # noqa: BLE001 (transformers' own error comes at the optimizer's creation)
            return
        if ignored:
            raise ValueError(f"--optim_args {', '.join(f'{k}={pairs[k]}' for k in ignored)}: transformers' {name} does "
                             "not take it, and would drop it silently. Remove it (--optim_args '' clears a recipe's), "
                             "or choose an optimizer that takes it (`hf-foco optimizers` lists hf_foco's).")
        if cls.__module__.startswith("torch.optim"):
            try:
                cls([torch.nn.Parameter(torch.zeros(2, 2))], **kwargs)
            except (ValueError, TypeError) as err:
                raise ValueError(f"--optim {name}: {err}. Fix it with --learning_rate, --weight_decay, --adam_beta1/"
                                 "--adam_beta2, --adam_epsilon or --optim_args.") from None

    def _check_monitor_settings(self) -> None:
        check_choice("weight_decay_policy", self.weight_decay_policy, tuple(DECAY_POLICIES))
        if self.gradient_compression is not None:
            check_choice("gradient_compression", self.gradient_compression, tuple(COMPRESSION_HOOKS))
        check_spike_settings(self.spike_window, self.spike_zscore)
        if min(self.hessian_iterations, self.hessian_batch_size) < 1 or self.hessian_every_n_steps < 0:
            raise ValueError("--hessian_every_n_steps must be >= 0 and --hessian_iterations, --hessian_batch_size "
                             f">= 1; got {self.hessian_every_n_steps}, {self.hessian_iterations}, "
                             f"{self.hessian_batch_size}.")
        if self.max_bad_steps < 1:
            raise ValueError(f"--max_bad_steps={self.max_bad_steps}: it must be >= 1.")

    def _check_counts(self) -> None:
        """Counts the base class accepts but trains wrongly with (or crashes on only at the first step)."""
        if not isinstance(self.gradient_accumulation_steps, int) or self.gradient_accumulation_steps < 1:
            raise ValueError(f"--gradient_accumulation_steps {self.gradient_accumulation_steps}: it must be an "
                             "integer >= 1 (1: no accumulation).")
        if self.max_steps < -1:
            raise ValueError(f"--max_steps {self.max_steps}: it must be > 0 (or -1 to train --num_train_epochs).")
        if isinstance(self.optim_kwargs, str):
            try:
                if not isinstance(json.loads(self.optim_kwargs), dict):
                    raise ValueError
            except ValueError:
                raise ValueError(f"--optim_kwargs {self.optim_kwargs!r} must be a JSON object: write it like "
                                 "'{\"gamma\": 0.2}' (double quotes around keys), or use --optim_args gamma=0.2.") from None
        if self.max_steps == 0:
            raise ValueError("--max_steps 0 trains nothing: pass a positive number of steps, or -1 to train "
                             "--num_train_epochs.")
        if self.max_steps < 0 and self.num_train_epochs <= 0:
            raise ValueError(f"--num_train_epochs {self.num_train_epochs} trains nothing: pass a positive number of "
                             "epochs, or --max_steps N.")
        for name in ("per_device_train_batch_size", "per_device_eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} {getattr(self, name)}: it must be >= 1.")
        for name, strategy in (("save_steps", self.save_strategy), ("eval_steps", self.eval_strategy)):
            value = getattr(self, name)
            if str(getattr(strategy, "value", strategy)) == "steps" and value is not None and value <= 0:
                raise ValueError(f"--{name} {value} with --{name.split('_')[0]}_strategy steps: it must be > 0 (a "
                                 "number of steps, or a fraction of the run below 1).")
        if self.max_grad_norm is not None and not (math.isfinite(self.max_grad_norm) and self.max_grad_norm >= 0):
            raise ValueError(f"--max_grad_norm {self.max_grad_norm}: it must be a finite number >= 0 (0: no "
                             "clipping).")

    def training_record(self) -> dict:
        """The batch and schedule settings a checkpoint records, to compare on resume (a changed batch or
        schedule would silently make another run; --max_steps may change, to train further)."""
        # With --tokens_per_step the accumulation follows from the number of processes; the global batch is
        # what must not change.
        batch = ({"tokens_per_step": self.tokens_per_step} if self.tokens_per_step is not None else
                 {"gradient_accumulation_steps": self.gradient_accumulation_steps})
        return {"per_device_train_batch_size": self.per_device_train_batch_size, **batch,
                "lr_scheduler_type": str(getattr(self.lr_scheduler_type, "value", self.lr_scheduler_type)),
                "warmup_steps": self.warmup_steps, "max_grad_norm": self.max_grad_norm, "seed": self.seed}

    def optimizer_record(self) -> dict:
        """The optimizer as a checkpoint records it (name and hyperparameters), to compare on resume."""
        if is_registry_optim(self.optim):
            return {"name": self.optim, **self.optimizer_kwargs()}
        return {"name": str(getattr(self.optim, "value", self.optim)), "lr": self.learning_rate,
                "weight_decay": self.weight_decay, "betas": [self.adam_beta1, self.adam_beta2],
                "optim_args": self.optim_args}

    def _check_set_up_for(self, spec) -> None:
        """Refuse a parallelism or batch size the optimizer cannot train with, before anything is built."""
        if not spec.supports_sharded_params:
            backend = "DeepSpeed" if self.deepspeed else "FSDP" if self.fsdp else sharding_in_use()
            if backend:
                raise sharding_refusal(f"--optim {spec.name}", backend)
        if spec.needs_half_batch_grads and self.per_device_train_batch_size < 2:
            raise ValueError(f"--optim {spec.name} splits every micro-batch into two halves, which a batch of "
                             f"{self.per_device_train_batch_size} example cannot be: set --per_device_train_batch_size "
                             "to 2 or more (even), with --dataloader_drop_last true.")

    def optimizer_kwargs(self) -> dict[str, Any]:
        """The keyword arguments the registry optimizer ``self.optim`` is built with."""
        return resolve_hyperparameters(get_optimizer(self.optim), learning_rate=self.learning_rate,
                                       weight_decay=self.weight_decay, betas=(self.adam_beta1, self.adam_beta2),
                                       optim_args=self.optim_args, optim_kwargs=self.optim_kwargs)
