"""hf_foco's optimizers through transformers' own extension points, for a Trainer that is not FocoTrainer.

transformers' ``Trainer`` (and every subclass: TRL's ``SFTTrainer``, a project's own) takes an optimizer two
official ways, neither of which involves ``--optim``:

* ``Trainer(optimizer_cls_and_kwargs=hf_foco.optimizer_cls_and_kwargs("foco", lr=6e-4))``: the Trainer builds the
  optimizer itself when training starts, from the model it has prepared (wrapped, compiled or sharded), so this
  route also works under DDP and FSDP. What it gets is a factory (transformers calls a first element that is not
  an optimizer class with the model and the keyword arguments), which groups the parameters as
  :func:`hf_foco.create_optimizer` does (``weight_decay_policy``, nanoGPT's by default).
* ``Trainer(optimizers=hf_foco.trainer_optimizers("foco", model, lr=6e-4))``: the optimizer built now, with the
  Trainer's learning-rate schedule left to the Trainer (it builds one from its arguments around this optimizer).
  transformers refuses this route under FSDP.

Either way the hyperparameters are the registry's defaults (``hf-foco optimizers``) updated by the keyword
arguments given here, checked now: ``--learning_rate``, ``--weight_decay`` and ``--adam_beta*`` do not reach an
optimizer chosen this way, as with any optimizer handed to transformers' Trainer. FocoTrainer's extras (the
stability monitor, LM metrics, the card) come only with FocoTrainer; so does the cooperation K-FAC and FOP need
(curvature batches fed through layer hooks, FOP's half-batch step), which is why they refuse these routes.
"""

from __future__ import annotations

from typing import Any

import torch

from ..optim import DECAY_POLICIES, create_optimizer, get_optimizer
from ..optim.hyperparameters import check_by_construction
from ..optim.validation import check_choice


def _checked(name: str, hyperparameters: dict[str, Any]) -> dict[str, Any]:
    """The registry defaults of ``name`` updated by ``hyperparameters``, refused for an optimizer that needs the
    trainer's cooperation, and checked by building it on a dummy parameter."""
    spec = get_optimizer(name)
    if spec.needs_layer_hooks or spec.needs_half_batch_grads:
        needs = " and ".join(part for flag, part in ((spec.needs_layer_hooks, "curvature batches from the "
                                                                           "trainer's layer hooks"),
                                                     (spec.needs_half_batch_grads, "its half-batch training step"))
                             if flag)
        raise ValueError(f"Optimizer {name!r} needs {needs}, which transformers' Trainer does not provide: train "
                         f"it with FocoTrainer (`hf-foco run SCRIPT.py --optim {name}`, or `from hf_foco import "
                         "FocoTrainer as Trainer, FocoTrainingArguments as TrainingArguments`).")
    kwargs = spec.resolve_kwargs(hyperparameters)
    check_by_construction(spec, kwargs)
    return kwargs


class RegistryOptimizerFactory:
    """What transformers' Trainer calls, as ``RegistryOptimizerFactory()(model, **kwargs)``, to build the optimizer
    ``kwargs["name"]`` on the model it prepared (see :func:`optimizer_cls_and_kwargs`)."""

    def __call__(self, model: torch.nn.Module, *, name: str, weight_decay_policy: str,
                 **hyperparameters) -> torch.optim.Optimizer:
        return create_optimizer(name, model, weight_decay_policy=weight_decay_policy, **hyperparameters)


def optimizer_cls_and_kwargs(name: str, *, weight_decay_policy: str = "nanogpt",
                             **hyperparameters) -> tuple[type, dict[str, Any]]:
    """``(factory, kwargs)`` for ``Trainer(optimizer_cls_and_kwargs=...)``: hf_foco's optimizer ``name`` with its
    registry defaults updated by ``hyperparameters`` (``lr``, ``betas``, ``weight_decay``, ``gamma``, ...), its
    parameters grouped by ``weight_decay_policy`` (:data:`hf_foco.optim.DECAY_POLICIES`). Unknown names, keys
    and bad values fail here; K-FAC and FOP refuse (they need FocoTrainer)."""
    check_choice("weight_decay_policy", weight_decay_policy, tuple(DECAY_POLICIES))
    return RegistryOptimizerFactory, {"name": name, "weight_decay_policy": weight_decay_policy,
                                      **_checked(name, hyperparameters)}


def trainer_optimizers(name: str, model: torch.nn.Module, *, weight_decay_policy: str = "nanogpt",
                       **hyperparameters) -> tuple[torch.optim.Optimizer, None]:
    """``(optimizer, None)`` for ``Trainer(optimizers=...)``: hf_foco's optimizer ``name`` built now on
    ``model``'s parameters, as :func:`optimizer_cls_and_kwargs` describes; the Trainer then builds its
    learning-rate schedule (``--lr_scheduler_type``, warmup) around it."""
    return create_optimizer(name, model, weight_decay_policy=weight_decay_policy,
                            **_checked(name, hyperparameters)), None
