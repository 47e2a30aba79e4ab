"""hf_foco's Hugging Face Trainer integration: ``--optim <registry name>``, stability monitor, run artifacts.

Public entry points (imported on first use, so ``hf-foco`` subcommands that need none of them stay fast):

* :class:`FocoTrainingArguments` / :class:`FocoTrainer`: drop-in ``TrainingArguments`` / ``Trainer``.
* :class:`StabilityCallback`: grad norm, update ratio, loss spikes, non-finite-update guard.
* :func:`write_run_artifacts`: model card, ``stability.json``, loss curve for a finished run.
* :func:`push_run`: upload a finished run to the Hub (``hf-foco push``).
"""

from importlib import import_module

_EXPORTS = {
    "FocoTrainingArguments": "arguments", "OptimChoices": "arguments", "is_registry_optim": "arguments",
    "write_run_artifacts": "artifacts", "LMMetrics": "evaluation", "load_lm_metric": "evaluation",
    "preprocess_logits_for_lm_metrics": "evaluation", "PushError": "push", "push_run": "push",
    "StabilityCallback": "stability", "TrainingDivergedError": "stability", "FocoTrainer": "trainer",
    "unwrap_optimizer": "trainer",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
