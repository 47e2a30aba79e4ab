"""From command-line settings to the keyword arguments a registry optimizer is built with.

Lowest priority first:

1. the registry defaults (a published GPT-2 setting; ``hf-foco optimizers`` lists them; unset usual fields
   take these);
2. the usual ``TrainingArguments`` fields: ``learning_rate`` -> ``lr``, ``weight_decay`` -> the decayed
   group's decay, ``adam_beta1``/``adam_beta2`` -> ``betas`` (only for optimizers that take ``betas``);
3. ``--optim_args "gamma=0.2,beta2=0.99"`` (flat; each value converted to the type of its default);
4. ``--optim_kwargs '{"betas": [0.9, 0.99], "gamma": 0.2}'`` (JSON, typed).

``beta1``/``beta2`` keys set one entry of ``betas``. Every unknown key or badly typed value fails here,
naming the fix, and :func:`check_by_construction` lets the optimizer's own range checks run before training.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ..hints import parse_key_values
from .registry import OptimizerSpec, init_parameters

_BETA_KEYS = {"beta1": 0, "beta2": 1, "beta3": 2}
_WORDS = {"true": True, "false": False, "none": None, "null": None}


def hyperparameter_defaults(spec: OptimizerSpec) -> dict[str, Any]:
    """The class signature's defaults overlaid with the registry's."""
    names = spec.hyperparameter_names()
    found = {n: p.default for n, p in init_parameters(spec.cls).items() if n in names and p.default is not p.empty}
    return {**found, **spec.defaults}


def parse_optim_args(text: str | None) -> dict[str, str]:
    """``--optim_args "a=1,b=2"`` -> ``{"a": "1", "b": "2"}``."""
    return parse_key_values(text, "--optim_args", "gamma=0.2,beta2=0.99")


def coerce(optim: str, key: str, value, default):
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


def _fold_betas(optim: str, betas, settings: dict) -> dict:
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
        betas[_BETA_KEYS[key]] = coerce(optim, key, value, 0.0)
    return {**settings, "betas": tuple(betas)}


def field_defaults(spec: OptimizerSpec) -> dict[str, Any]:
    """What the usual TrainingArguments fields mean for ``spec`` when left unset."""
    defaults = hyperparameter_defaults(spec)
    betas = defaults.get("betas")
    return {"learning_rate": defaults.get("lr"), "weight_decay": defaults.get("weight_decay", 0.0),
            "adam_beta1": betas[0] if betas else 0.9, "adam_beta2": betas[1] if betas else 0.999}


def resolve_hyperparameters(spec: OptimizerSpec, *, learning_rate: float, weight_decay: float | None,
                            betas: tuple[float, float] | None, optim_args: str | None,
                            optim_kwargs: Mapping[str, Any] | None) -> dict[str, Any]:
    """The keyword arguments ``spec.cls`` is built with (see the module docstring for the order)."""
    names = spec.hyperparameter_names()
    defaults = hyperparameter_defaults(spec)
    settings: dict[str, Any] = {"lr": learning_rate}
    if "weight_decay" in names:
        settings["weight_decay"] = weight_decay
    elif weight_decay:
        raise ValueError(f"Optimizer {spec.name!r} takes no weight_decay; drop --weight_decay.")
    if "betas" in names and isinstance(defaults.get("betas"), tuple):
        settings["betas"] = (*betas, *defaults["betas"][2:])
    extra = {**parse_optim_args(optim_args), **(optim_kwargs or {})}
    extra = _fold_betas(spec.name, settings.get("betas"), extra)
    spec.resolve_kwargs(extra)  # unknown keys fail here, naming the valid ones
    settings.update({k: coerce(spec.name, k, v, defaults.get(k)) for k, v in extra.items()})
    return spec.resolve_kwargs(settings)


def check_by_construction(spec: OptimizerSpec, kwargs: Mapping[str, Any]) -> None:
    """Build the optimizer on a dummy parameter (a one-layer stand-in model for classes that take one) so its
    own checks reject bad values now, not at step 1."""
    try:
        if spec.takes_model:
            model = torch.nn.Sequential(torch.nn.Linear(2, 2))
            spec.cls(list(model.parameters()), model=model, **kwargs)
        else:
            spec.cls([torch.nn.Parameter(torch.zeros(2, 2))], **kwargs)
    except (ValueError, TypeError) as err:
        raise ValueError(f"--optim {spec.name}: {err} Fix it with --learning_rate/--weight_decay/"
                         f"--adam_beta1/--adam_beta2, --optim_args or --optim_kwargs.") from None
