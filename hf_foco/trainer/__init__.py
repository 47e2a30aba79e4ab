"""hf_foco's Hugging Face Trainer integration: ``--optim <registry name>``, the half-batch step, the stability
monitor, checkpoints, evaluation and the run record.

Public entry points (imported on first use, so ``hf-foco`` subcommands that need none of them stay fast):

* :class:`FocoTrainingArguments` / :class:`FocoTrainer`: drop-in ``TrainingArguments`` / ``Trainer``.
* :class:`StabilityCallback`: grad norm, update ratio, loss spikes, non-finite-update guard.
* :class:`HessianEigenvalueCallback`: the top Hessian eigenvalue along training.
* :func:`write_run_artifacts`: the run record, model card and loss curve of a finished run.
* :func:`optimizer_cls_and_kwargs` / :func:`trainer_optimizers`: hf_foco's optimizers for transformers' own
  ``Trainer`` (or a subclass, TRL's) through its ``optimizer_cls_and_kwargs`` / ``optimizers`` arguments.
"""

from importlib import import_module

_EXPORTS = {
    "FocoTrainingArguments": ".arguments", "OptimChoices": ".arguments", "is_registry_optim": ".arguments",
    "LMMetrics": ".evaluation", "load_lm_metric": ".evaluation", "preprocess_logits_for_lm_metrics": ".evaluation",
    "write_run_artifacts": ".record", "HessianEigenvalueCallback": ".sharpness", "StabilityCallback": ".stability",
    "TrainingDivergedError": ".stability", "FocoTrainer": ".trainer",
    "unwrap_optimizer": "..distributed.wrappers",
    "optimizer_cls_and_kwargs": ".extension", "trainer_optimizers": ".extension",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name], __name__), name)
