"""hf_foco: FOCUS, foco, FOP and sign-based optimizers for GPT-style pretraining with Hugging Face tools."""

from .optim import create_optimizer, get_optimizer, list_optimizers, register_optimizer

__version__ = "0.1.0"

__all__ = ["FocoTrainer", "FocoTrainingArguments", "__version__", "create_optimizer", "get_optimizer",
           "list_optimizers", "register_optimizer"]


def __getattr__(name: str):
    """FocoTrainer and FocoTrainingArguments on first use: ``import hf_foco`` does not load transformers."""
    if name in ("FocoTrainer", "FocoTrainingArguments"):
        from . import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
