"""Which saved optimizer state an optimizer accepts.

torch's ``Optimizer.load_state_dict`` loads any state dict whose parameter groups have the right sizes, and
the optimizer fails at its next step (a missing ``exp_avg_sq``) or, worse, steps on state that means something
else. Every registry optimizer therefore checks first that the state was saved by one of its kind: no
hyperparameter it does not have, no per-parameter state tensor it does not keep, and every one it needs.
"""

from __future__ import annotations

from collections.abc import Collection

import torch


def check_state_kind(optimizer: torch.optim.Optimizer, state_dict: dict, allowed: Collection[str],
                     required: Collection[str] = ()) -> None:
    """Refuse ``state_dict`` unless ``optimizer`` could have saved it: its parameter groups' keys are among
    ``optimizer``'s, its per-parameter state names (besides ``step``) among ``allowed``, and, when it holds any
    state, it holds every name of ``required``."""
    ours = {key for group in optimizer.param_groups for key in group if key != "params"}
    theirs = {key for group in state_dict.get("param_groups", ()) for key in group if key != "params"}
    names = {key for state in state_dict.get("state", {}).values() for key in state if key != "step"}
    if theirs - ours or names - set(allowed) or (names and not set(required) <= names):
        raise ValueError(
            f"This state dict was saved by another optimizer (hyperparameters {sorted(theirs)}, state "
            f"{sorted(names)}), not by {type(optimizer).__name__} (hyperparameters {sorted(ours)}, state "
            f"{sorted(allowed)}). Resume with the optimizer that saved it, or start its state afresh.")
