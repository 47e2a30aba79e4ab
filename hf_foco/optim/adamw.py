"""The registry's ``adamw``: torch's AdamW, refusing another optimizer's state (:mod:`.state`)."""

from __future__ import annotations

import torch

from .state import check_state_kind


class AdamW(torch.optim.AdamW):
    """``torch.optim.AdamW`` with the same arguments and steps; ``load_state_dict`` refuses the state of
    another optimizer (torch's loads it and fails at the next step)."""

    def load_state_dict(self, state_dict: dict) -> None:
        required = ("exp_avg", "exp_avg_sq")
        amsgrad = any(group.get("amsgrad") for group in self.param_groups)
        check_state_kind(self, state_dict, (*required, *(("max_exp_avg_sq",) if amsgrad else ())), required)
        super().load_state_dict(state_dict)
