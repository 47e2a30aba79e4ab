"""Which parameters get weight decay: named policies, applied the same way by every entry point.

The default is nanoGPT's: decay every parameter with two or more dimensions (Linear/Conv1D weights and
embeddings), never biases or LayerNorm gains. FOCUS's authors trained GPT-2 that way; parameters without
decay still receive the sign and attraction updates.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .validation import check_choice


def _nanogpt(name: str, param: torch.Tensor) -> bool:
    return param.dim() >= 2


def _no_bias_or_norm(name: str, param: torch.Tensor) -> bool:
    """transformers' Trainer policy: everything but biases and normalisation weights."""
    lowered = name.lower()
    return not (lowered.endswith("bias") or "norm" in lowered or ".ln_" in lowered or lowered.startswith("ln_"))


def _everything(name: str, param: torch.Tensor) -> bool:
    return True


DECAY_POLICIES: dict[str, Callable[[str, torch.Tensor], bool]] = {
    "nanogpt": _nanogpt,
    "no_bias_or_norm": _no_bias_or_norm,
    "all": _everything,
}


def param_groups(model: torch.nn.Module, weight_decay: float, policy: str = "nanogpt") -> list[dict]:
    """Two parameter groups, decayed then undecayed, in ``named_parameters`` order (resume-stable).

    Each group records its ``param_names`` so optimizers that hook layers can find their modules.
    """
    check_choice("weight_decay_policy", policy, tuple(DECAY_POLICIES))
    decides = DECAY_POLICIES[policy]
    decay, no_decay = ([], []), ([], [])
    for name, param in model.named_parameters():
        if param.requires_grad:
            names, params = decay if decides(name, param) else no_decay
            names.append(name)
            params.append(param)
    groups = [
        {"params": decay[1], "param_names": decay[0], "weight_decay": weight_decay},
        {"params": no_decay[1], "param_names": no_decay[0], "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]
