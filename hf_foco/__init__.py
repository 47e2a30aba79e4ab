"""hf_foco: FOCUS, foco, FOP and sign-based optimizers for GPT-style pretraining with Hugging Face tools."""

from .optim import create_optimizer, get_optimizer, list_optimizers, register_optimizer

__version__ = "0.1.0"

__all__ = ["__version__", "create_optimizer", "get_optimizer", "list_optimizers", "register_optimizer"]
