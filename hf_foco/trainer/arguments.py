"""``FocoTrainingArguments``: ``TrainingArguments`` whose ``--optim`` also accepts hf_foco's registry.

transformers turns ``optim`` into an enum, so ``--optim foco`` dies in argparse and
``TrainingArguments(optim="foco")`` in ``__post_init__``. This subclass redeclares ``optim`` as a string
whose argparse ``choices`` is a live view of both name sets (names registered after import included) and
hides a registry name from the base class's enum check.

Name clashes: a native transformers name always means the native optimizer, so existing scripts keep
their behaviour; a registry entry that shadows a native name is only reachable through
:func:`hf_foco.optim.create_optimizer`. (``adamw`` is a registry name: transformers' is ``adamw_torch``.)

Hyperparameters of a registry optimizer, lowest priority first:

1. the registry defaults (``hf-foco optimizers`` lists them; fields left unset take these);
2. the usual fields: ``learning_rate`` -> ``lr``, ``weight_decay`` -> the decayed group's decay,
   ``adam_beta1``/``adam_beta2`` -> ``betas`` (only for optimizers that take ``betas``);
3. ``--optim_args "gamma=0.2,beta2=0.99"`` (flat; values converted to the type of the default);
4. ``--optim_kwargs '{"betas": [0.9, 0.99], "gamma": 0.2}'`` (JSON, typed).

``beta1``/``beta2`` keys set one entry of ``betas``. After ``__post_init__`` the usual fields hold the
values actually used, so logs and model cards report them.
"""

from __future__ import annotations

import difflib
import inspect
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import TrainingArguments
from transformers.training_args import OptimizerNames

from ..distributed import COMPRESSION_HOOKS
from ..optim import DECAY_POLICIES, get_optimizer, is_registered, list_optimizers
from ..optim.fop import sharding_in_use
from ..optim.validation import check_choice

NATIVE_OPTIMIZERS: tuple[str, ...] = tuple(o.value for o in OptimizerNames)
# transformers' own defaults for the fields this class leaves unset (None) until it knows the optimizer.
_NATIVE_DEFAULTS = {"learning_rate": 5e-5, "weight_decay": 0.0, "adam_beta1": 0.9, "adam_beta2": 0.999}
_BETA_KEYS = {"beta1": 0, "beta2": 1, "beta3": 2}


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


def hyperparameter_defaults(spec) -> dict[str, Any]:
    """The class signature's defaults overlaid with the registry's recommended ones."""
    sig = inspect.signature(spec.cls.__init__)
    names = spec.hyperparameter_names()
    found = {n: p.default for n, p in sig.parameters.items() if n in names and p.default is not p.empty}
    return {**found, **spec.defaults}


def parse_optim_args(text: str | None) -> dict[str, str]:
    """``"a=1,b=2"`` -> ``{"a": "1", "b": "2"}``; a piece without ``=`` fails naming the format."""
    pairs: dict[str, str] = {}
    for piece in (text or "").split(","):
        if not piece.strip():
            continue
        key, sep, value = piece.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--optim_args: {piece.strip()!r} is not key=value; write e.g. "
                             "--optim_args \"gamma=0.2,beta2=0.99\".")
        pairs[key.strip()] = value.strip()
    return pairs


_WORDS = {"true": True, "false": False, "none": None, "null": None}


def _coerce(optim: str, key: str, value, default):
    """Convert a command-line string to the type of the optimizer's default for ``key``."""
    if isinstance(default, tuple):
        if isinstance(value, (list, tuple)):
            return tuple(value)
        raise ValueError(f"Optimizer {optim!r}: {key} takes a sequence; pass it as a JSON list in --optim_kwargs "
                         f"('{{\"{key}\": [...]}}') or, for betas, as beta1=...,beta2=... in --optim_args.")
    if not isinstance(value, str):
        return float(value) if isinstance(default, float) and isinstance(value, int) else value
    lowered = value.lower()
    if isinstance(default, bool) or (default is None and lowered in _WORDS):
        if lowered not in _WORDS:
            raise ValueError(f"Optimizer {optim!r}: {key}={value!r} must be true or false.")
        return _WORDS[lowered]
    if isinstance(default, (int, float)) or default is None:
        try:
            number = float(value)
        except ValueError:
            if default is None:
                return value
            raise ValueError(f"Optimizer {optim!r}: {key}={value!r} must be a number.") from None
        return int(number) if isinstance(default, int) and number.is_integer() else number
    return value


def _with_betas(optim: str, betas, settings: dict) -> dict:
    """Fold ``beta1``/``beta2`` keys into ``betas``."""
    picked = {k: settings.pop(k) for k in list(settings) if k in _BETA_KEYS}
    if not picked:
        return settings
    if betas is None:
        raise ValueError(f"Optimizer {optim!r} has no betas; remove {', '.join(sorted(picked))} from --optim_args.")
    betas = list(settings.get("betas", betas))
    for key, value in picked.items():
        if _BETA_KEYS[key] >= len(betas):
            raise ValueError(f"Optimizer {optim!r} takes {len(betas)} betas; {key} does not exist.")
        betas[_BETA_KEYS[key]] = _coerce(optim, key, value, 0.0)
    return {**settings, "betas": tuple(betas)}


@dataclass
class FocoTrainingArguments(TrainingArguments):
    """``TrainingArguments`` plus hf_foco's optimizers, parameter grouping and stability monitor."""

    _VALID_DICT_FIELDS = [*TrainingArguments._VALID_DICT_FIELDS, "optim_kwargs"]

    optim: str = field(
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
    include_num_input_tokens_seen: str | bool = field(
        default=True, metadata={"help": "Count input tokens (all, non_padding or no); on by default because the "
                                         "model card reports the tokens seen."})
    stability_monitor: bool = field(
        default=True, metadata={"help": "Log grad norm, update/weight ratio and loss spikes; skip non-finite "
                                        "updates (see hf_foco.trainer.stability)."})
    spike_window: int = field(default=50, metadata={"help": "Trailing logged losses the spike z-score uses."})
    spike_zscore: float = field(default=6.0, metadata={"help": "A logged loss this many standard deviations above "
                                                               "the trailing mean is a spike."})
    max_bad_steps: int = field(default=5, metadata={"help": "Stop after this many consecutive steps with "
                                                            "non-finite gradients."})
    gradient_compression: str | None = field(
        default=None, metadata={"help": "DDP gradient compression hook (multi-process DDP only): none (fp32, with "
                                        "byte counting), bf16, sign (1-bit signs with error feedback) or powersgd. "
                                        "See hf_foco.distributed.compression.",
                                "choices": tuple(COMPRESSION_HOOKS)})

    def __post_init__(self):
        name = getattr(self.optim, "value", self.optim)
        if name not in OptimChoices():
            close = difflib.get_close_matches(str(name), list(OptimChoices()), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"Unknown optimizer --optim {name!r}.{hint} Run `hf-foco optimizers` for hf_foco's, "
                             f"or see transformers' OptimizerNames.")
        self._check_monitor_settings()
        if self.push_to_hub:
            from huggingface_hub import constants

            if constants.HF_HUB_OFFLINE:
                raise ValueError("--push_to_hub needs the network but HF_HUB_OFFLINE=1 is set: drop --push_to_hub "
                                 "and upload the finished run later with `hf-foco push OUTPUT_DIR --repo-id USER/NAME`.")
        if not is_registry_optim(name):
            if self.optim_kwargs is not None:
                raise ValueError(f"--optim_kwargs configures hf_foco optimizers only; for {name!r} use --optim_args.")
            for key, value in _NATIVE_DEFAULTS.items():
                if getattr(self, key) is None:
                    setattr(self, key, value)
            super().__post_init__()
            return
        spec = get_optimizer(name)
        self._check_set_up_for(spec)
        defaults = hyperparameter_defaults(spec)
        betas = defaults.get("betas")
        if not betas and (self.adam_beta1, self.adam_beta2) != (None, None):
            raise ValueError(f"Optimizer {name!r} takes no betas: drop --adam_beta1/--adam_beta2 (its settings: "
                             f"{', '.join(sorted(spec.hyperparameter_names()))}; set them with --optim_args).")
        unset = {"learning_rate": defaults.get("lr"), "weight_decay": defaults.get("weight_decay", 0.0),
                 "adam_beta1": betas[0] if betas else 0.9, "adam_beta2": betas[1] if betas else 0.999}
        for key, value in unset.items():
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
        self._check_by_construction(spec, kwargs)
        self.learning_rate = kwargs["lr"]
        self.weight_decay = kwargs.get("weight_decay", 0.0)
        if "betas" in kwargs:
            self.adam_beta1, self.adam_beta2 = kwargs["betas"][:2]

    def _check_monitor_settings(self) -> None:
        check_choice("weight_decay_policy", self.weight_decay_policy, tuple(DECAY_POLICIES))
        if self.gradient_compression is not None:
            check_choice("gradient_compression", self.gradient_compression, tuple(COMPRESSION_HOOKS))
        if self.spike_window < 2:
            raise ValueError(f"--spike_window={self.spike_window}: it must be >= 2 (logged losses per z-score).")
        if not (math.isfinite(self.spike_zscore) and self.spike_zscore > 0):
            raise ValueError(f"--spike_zscore={self.spike_zscore}: it must be a positive number.")
        if self.max_bad_steps < 1:
            raise ValueError(f"--max_bad_steps={self.max_bad_steps}: it must be >= 1.")

    def _check_set_up_for(self, spec) -> None:
        """Refuse a parallelism or batch size the optimizer cannot train with, before anything is built."""
        if not spec.supports_sharded_params:
            backend = "DeepSpeed" if self.deepspeed else "FSDP" if self.fsdp else sharding_in_use()
            if backend:
                raise ValueError(f"--optim {spec.name} needs every weight matrix whole, but {backend} shards them: "
                                 "train it with plain data parallelism (accelerate launch --multi_gpu, without "
                                 "--fsdp/--deepspeed or an FSDP/DeepSpeed accelerate config), or choose an "
                                 "optimizer that supports sharding, such as foco or adamw.")
        if spec.needs_half_batch_grads and self.per_device_train_batch_size < 2:
            raise ValueError(f"--optim {spec.name} splits every micro-batch into two halves, which a batch of "
                             f"{self.per_device_train_batch_size} example cannot be: set --per_device_train_batch_size "
                             "to 2 or more (even), with --dataloader_drop_last true.")

    @staticmethod
    def _check_by_construction(spec, kwargs: dict) -> None:
        """Build the optimizer on a dummy parameter so its own checks reject bad values now, not at step 1."""
        if spec.needs_layer_hooks:
            return  # needs a real model; resolve_kwargs has already checked the names
        try:
            spec.cls([torch.nn.Parameter(torch.zeros(2, 2))], **kwargs)
        except (ValueError, TypeError) as err:
            raise ValueError(f"--optim {spec.name}: {err} Fix it with --learning_rate/--weight_decay/"
                             f"--adam_beta1/--adam_beta2, --optim_args or --optim_kwargs.") from None

    def optimizer_kwargs(self) -> dict[str, Any]:
        """The keyword arguments the registry optimizer ``self.optim`` is built with (see module docstring)."""
        spec = get_optimizer(self.optim)
        names = spec.hyperparameter_names()
        defaults = hyperparameter_defaults(spec)
        settings: dict[str, Any] = {"lr": self.learning_rate}
        if "weight_decay" in names:
            settings["weight_decay"] = self.weight_decay
        elif self.weight_decay:
            raise ValueError(f"Optimizer {spec.name!r} takes no weight_decay; drop --weight_decay.")
        if "betas" in names and isinstance(defaults.get("betas"), tuple):
            settings["betas"] = (self.adam_beta1, self.adam_beta2, *defaults["betas"][2:])
        extra = {**parse_optim_args(self.optim_args), **(self.optim_kwargs or {})}
        extra = _with_betas(spec.name, settings.get("betas"), extra)
        spec.resolve_kwargs(extra)  # unknown keys fail here, naming the valid ones
        settings.update({k: _coerce(spec.name, k, v, defaults.get(k)) for k, v in extra.items()})
        return spec.resolve_kwargs(settings)
