"""hf_foco: FOCUS, foco, FOP and sign-based optimizers for GPT-style pretraining with Hugging Face tools."""

from .optim import create_optimizer, get_optimizer, list_optimizers, register_optimizer

__version__ = "0.1.0"

__all__ = ["FocoTrainer", "FocoTrainingArguments", "__version__", "create_optimizer", "get_optimizer", "install",
           "installed", "list_optimizers", "optimizer_cls_and_kwargs", "register_optimizer", "trainer_optimizers",
           "uninstall"]

# Loaded on first use, so that ``import hf_foco`` does not load transformers.
_LAZY = {"FocoTrainer": "trainer", "FocoTrainingArguments": "trainer", "install": "run", "uninstall": "run",
         "installed": "run", "optimizer_cls_and_kwargs": "trainer", "trainer_optimizers": "trainer"}


def __getattr__(name: str):
    """FocoTrainer, FocoTrainingArguments, install/uninstall/installed (:mod:`hf_foco.run`) and the extension
    point for transformers' own Trainer (:mod:`hf_foco.trainer.extension`) on first use."""
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
