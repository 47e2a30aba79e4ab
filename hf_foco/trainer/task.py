"""What a model is trained for, read from its class the way transformers' own model card reads it.

FocoTrainer gives a causal language model the pretraining defaults (next-token metrics, tokens seen, the
pretraining card) and any other model transformers' stock behaviour plus the optimizer and the stability
monitor. The task is the pipeline tag whose auto-model mapping lists the model's class
(``transformers.modelcard.TASK_MAPPING``: ``GPT2LMHeadModel`` -> ``text-generation``,
``BertForSequenceClassification`` -> ``text-classification``); a model of no listed class has no task.
"""

from __future__ import annotations

from torch import nn

CAUSAL_LM_TASK = "text-generation"


def _class_names(mapping) -> set[str]:
    """The model class names an auto-model mapping lists (a value may be one name or a tuple of them)."""
    return {name for value in mapping.values() for name in ((value,) if isinstance(value, str) else value)}


def model_task(model: nn.Module | None) -> str | None:
    """The pipeline tag of ``model``'s class (the causal-LM task first), or None for a class no task lists."""
    from transformers.modelcard import TASK_MAPPING

    if hasattr(model, "get_base_model"):  # a PEFT wrapper: the model it adapts
        model = model.get_base_model()
    name = type(model).__name__
    if name in _class_names(TASK_MAPPING[CAUSAL_LM_TASK]):
        return CAUSAL_LM_TASK
    return next((task for task, mapping in TASK_MAPPING.items() if name in _class_names(mapping)), None)


def is_causal_lm(model: nn.Module | None, asked: bool | None = None) -> bool:
    """Whether ``model`` is trained as a causal LM: ``asked`` (``--causal_lm``) when set, else its class's task."""
    return asked if asked is not None else model_task(model) == CAUSAL_LM_TASK
