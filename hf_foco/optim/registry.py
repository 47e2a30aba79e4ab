"""The optimizer registry: a name maps to a small record (class, defaults, capabilities).

Like timm's optimizer factory, there is no if/else chain anywhere: the Trainer integration, the CLI and
the recipes all look optimizers up here. Third-party packages add their own through the entry-point group
``hf_foco.optimizers`` (the entry point loads an :class:`OptimizerSpec`, or a callable that registers).

Two capability flags change how a trainer drives an optimizer; each comes with a small interface the
optimizer implements, so the optimizer never has to know a trainer (FocoTrainer implements the other side):

* ``needs_layer_hooks`` (:class:`LayerHookOptimizer`): built with ``model=``; the trainer calls
  ``attach(prepared_model)`` once the model is wrapped, and, at the first micro-batch of every optimizer
  step whose ``curvature_due`` is true, ``update_curvature(inputs)`` with that micro-batch.
* ``needs_half_batch_grads`` (:class:`HalfBatchOptimizer`): the trainer splits every micro-batch in two
  halves, backpropagates each on its own, leaves ``p.grad`` = the full-batch gradient (which it clips and
  logs as usual) and, before ``step()``, calls ``receive_half_batch_difference(diffs)`` with g1 − g2 (the
  mean-loss gradients of the two halves) for each of ``half_batch_params``.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from types import MappingProxyType
from typing import Any, Protocol

import torch
from torch import nn

from ..hints import did_you_mean, unknown_names

ENTRY_POINT_GROUP = "hf_foco.optimizers"


class LayerHookOptimizer(Protocol):
    """What an optimizer with ``needs_layer_hooks`` offers the trainer (see the module docstring)."""

    def attach(self, model: nn.Module) -> None: ...

    @property
    def curvature_due(self) -> bool: ...

    def update_curvature(self, inputs: Mapping[str, Any]) -> None: ...


class HalfBatchOptimizer(Protocol):
    """What an optimizer with ``needs_half_batch_grads`` offers the trainer (see the module docstring)."""

    half_batch_params: Sequence[torch.Tensor]

    def receive_half_batch_difference(self, diffs: Sequence[torch.Tensor | None]) -> None: ...


@dataclass(frozen=True)
class OptimizerSpec:
    """What hf_foco needs to know to build and drive an optimizer.

    Attributes:
        name: registry key, also the value of ``--optim``.
        cls: a ``torch.optim.Optimizer`` subclass. Its keyword arguments are its hyperparameters, read from
            its signature; a subclass that adds its own and passes ``**kwargs`` on is read together with its
            parent (:func:`init_parameters`). A class that takes ``model`` is built with the model.
        defaults: hyperparameters applied before user overrides: a published GPT-2 setting, which
            ``defaults_from`` names (settings tuned at other scales live in the recipes, which say so).
        defaults_from: where ``defaults`` come from, shown by ``hf-foco optimizers``.
        paper: citation shown by ``hf-foco optimizers`` and in model cards.
        state_bytes_per_param: optimizer state per fp32 parameter, for tables and memory estimates; None
            when the state is not proportional to the parameters, and ``state`` then says what it is.
        state: what the optimizer state is when no byte count per parameter says it (K-FAC's Kronecker
            factors).
        needs_half_batch_grads: the trainer hands over two half-batch gradients per step
            (:class:`HalfBatchOptimizer`; FOP).
        needs_layer_hooks: the optimizer hooks model layers and needs curvature batches
            (:class:`LayerHookOptimizer`; K-FAC, FOP).
        supports_sharded_params: elementwise rules work on FSDP2 DTensors and DeepSpeed flat shards.
        description: when to use it, one line.
    """

    name: str
    cls: type[torch.optim.Optimizer]
    defaults: Mapping[str, Any] = field(default_factory=dict)
    defaults_from: str = ""
    paper: str = ""
    state_bytes_per_param: float | None = None
    state: str = ""
    needs_half_batch_grads: bool = False
    needs_layer_hooks: bool = False
    supports_sharded_params: bool = True
    description: str = ""

    def __post_init__(self):
        if not (isinstance(self.cls, type) and issubclass(self.cls, torch.optim.Optimizer)):
            raise TypeError(f"Optimizer {self.name!r}: cls must subclass torch.optim.Optimizer, got {self.cls!r}.")
        object.__setattr__(self, "defaults", MappingProxyType(dict(self.defaults)))
        unknown = set(self.defaults) - self.hyperparameter_names()
        if unknown:
            raise TypeError(f"Optimizer {self.name!r}: defaults {sorted(unknown)} are not arguments of "
                            f"{self.cls.__name__}; valid: {sorted(self.hyperparameter_names())}.")

    def hyperparameter_names(self) -> set[str]:
        """Keyword arguments of the optimizer class (everything but ``params`` and, if any, ``model``)."""
        return set(init_parameters(self.cls)) - {"params", "model"}

    @property
    def takes_model(self) -> bool:
        """Whether the class is built with ``model=`` (it finds its layers there: K-FAC, FOP, Muon)."""
        return "model" in init_parameters(self.cls)

    def resolve_kwargs(self, overrides: Mapping[str, Any]) -> dict[str, Any]:
        """Defaults merged with ``overrides``; an unknown key fails naming the valid ones."""
        valid = self.hyperparameter_names()
        unknown = set(overrides) - valid
        if unknown:
            raise ValueError(f"Unknown hyperparameter(s) for optimizer {self.name!r}: "
                             f"{unknown_names(unknown, valid)}. Valid keys: {', '.join(sorted(valid))}.")
        return {**self.defaults, **overrides}


def init_parameters(cls: type) -> dict[str, inspect.Parameter]:
    """The named parameters of ``cls.__init__`` (``self`` excluded), followed up the class hierarchy while an
    ``__init__`` passes ``**kwargs`` on to its parent's: a subclass that adds arguments to its parent's is
    read as one signature, without repeating the parent's."""
    found: dict[str, inspect.Parameter] = {}
    for klass in cls.__mro__:
        init = vars(klass).get("__init__")
        if init is None:
            continue
        forwards = False
        for name, param in list(inspect.signature(init).parameters.items())[1:]:
            if param.kind is param.VAR_KEYWORD:
                forwards = True
            elif param.kind in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY):
                found.setdefault(name, param)
        if not forwards:
            break
    return found


_REGISTRY: dict[str, OptimizerSpec] = {}
_entry_points_loaded = False


def register_optimizer(name: str, cls: type[torch.optim.Optimizer] | None = None, *, overwrite: bool = False,
                       **record) -> Any:
    """Register ``cls`` under ``name``; without ``cls`` it returns a class decorator.

    ``record`` holds the other :class:`OptimizerSpec` fields (``defaults``, ``paper``, capability flags).
    Registering an existing name raises unless ``overwrite=True``.
    """
    if cls is None:
        def decorator(klass):
            register_optimizer(name, klass, overwrite=overwrite, **record)
            return klass
        return decorator
    key = name.lower()
    if key in _REGISTRY and not overwrite:
        raise ValueError(f"An optimizer named {key!r} is already registered ({_REGISTRY[key].cls.__name__}); "
                         "pass overwrite=True to replace it.")
    spec = OptimizerSpec(name=key, cls=cls, **record)
    _REGISTRY[key] = spec
    return spec


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        obj = ep.load()
        if isinstance(obj, OptimizerSpec):
            _REGISTRY.setdefault(obj.name, obj)
        elif callable(obj):
            obj()
        else:
            raise TypeError(f"Entry point {ep.name!r} in group {ENTRY_POINT_GROUP!r} must load an "
                            f"OptimizerSpec or a callable that registers, got {type(obj).__name__}.")


def is_registered(name: str) -> bool:
    _load_entry_points()
    return isinstance(name, str) and name.lower() in _REGISTRY


def get_optimizer(name: str) -> OptimizerSpec:
    """The record for ``name``; an unknown name fails with the known names and the closest match."""
    _load_entry_points()
    spec = _REGISTRY.get(name.lower()) if isinstance(name, str) else None
    if spec is None:
        known = sorted(_REGISTRY)
        raise KeyError(f"Unknown optimizer {name!r}.{did_you_mean(str(name).lower(), known)} Known optimizers: "
                       f"{', '.join(known)}.")
    return spec


def spec_of(optimizer: torch.optim.Optimizer) -> OptimizerSpec | None:
    """The record whose class ``optimizer`` is an instance of (exactly), or None for unregistered classes."""
    _load_entry_points()
    return next((spec for spec in _REGISTRY.values() if type(optimizer) is spec.cls), None)


def list_optimizers() -> list[OptimizerSpec]:
    """Every registered record, sorted by name."""
    _load_entry_points()
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]


class RegisteredNames:
    """A live view of the registry's names (``in`` and iteration), for argparse ``choices``."""

    def __contains__(self, name) -> bool:
        return is_registered(name)

    def __iter__(self):
        return iter(spec.name for spec in list_optimizers())

    def __repr__(self) -> str:
        return f"RegisteredNames({list(self)})"


def create_optimizer(name: str, params_or_model: torch.nn.Module | Iterable, *, weight_decay_policy: str = "nanogpt",
                     **overrides) -> torch.optim.Optimizer:
    """Build the registered optimizer ``name``.

    ``params_or_model`` is either parameters / parameter groups, used as given, or an ``nn.Module``, whose
    parameters are grouped by :func:`hf_foco.optim.grouping.param_groups` with ``weight_decay_policy``
    (default: weight decay on >= 2-D weights only, as nanoGPT). Optimizers that need layer hooks require
    the module, as do those whose class takes ``model`` (Muon finds its hidden matrices there).
    """
    from .grouping import param_groups

    spec = get_optimizer(name)
    kwargs = spec.resolve_kwargs(overrides)
    if isinstance(params_or_model, torch.nn.Module):
        model = params_or_model
        params = param_groups(model, kwargs.get("weight_decay", 0.0), policy=weight_decay_policy)
    else:
        model, params = None, params_or_model
    if spec.takes_model or spec.needs_layer_hooks:
        if model is None:
            raise TypeError(f"Optimizer {spec.name!r} finds the model's layers: pass the model, not its parameters.")
        return spec.cls(params, model=model, **kwargs)
    return spec.cls(params, **kwargs)

