"""The skeleton of hf_foco's elementwise optimizers (FOCUS, foco, Signum, Lion).

Each subclass names its rule (an :class:`~hf_foco.optim.dispatch.ElementwiseRule`, whose public functional form
lives in the subclass's module, as ``torch.optim.adamw.adamw`` beside ``AdamW``) and its state tensors; the
class collects parameters, creates state lazily and hands every parameter group to the rule's dispatch, which
picks the implementation (:mod:`~hf_foco.optim.dispatch`). The compiled steps of all groups run as one call.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import torch
from torch.optim import Optimizer

from .base import PARAM_DTYPES, closure_loss
from .dispatch import ElementwiseRule, HyperTensors, step_device
from .state import check_state_kind


class ElementwiseOptimizer(Optimizer):
    """Base for optimizers whose update is elementwise.

    Subclasses set ``rule``, ``state_names`` (the per-parameter tensors besides ``step``, in the rule's
    order; fp32 unless ``state_dtype`` says otherwise) and ``rule_hyperparameters(group)`` (the group's
    settings as the rule's keyword arguments). Because the update is elementwise it works on FSDP2's sharded
    DTensor parameters (through their local shards) and on DeepSpeed's flat shards.
    """

    rule: ClassVar[ElementwiseRule]
    state_names: tuple[str, ...] = ()

    def add_param_group(self, param_group: dict) -> None:
        """Refuse parameters of a dtype the steps do not keep exactly (float64 would be rounded to fp32 by
        every step, the fp32 state could not hold it either)."""
        super().add_param_group(param_group)
        for p in self.param_groups[-1]["params"]:
            if p.dtype not in PARAM_DTYPES:
                raise ValueError(f"{type(self).__name__}: {p.dtype} parameters are not supported (the step computes "
                                 "in float32 and would round them every step); use float32, bfloat16 or float16 "
                                 "parameters, e.g. model.float().")

    def state_dtype(self, name: str, p: torch.Tensor) -> torch.dtype:
        """dtype of state tensor ``name`` for parameter ``p``: fp32 unless a subclass says otherwise."""
        return torch.float32

    def rule_hyperparameters(self, group: dict) -> dict:
        raise NotImplementedError

    def _init_state(self, p: torch.Tensor) -> dict[str, torch.Tensor]:
        state = {"step": torch.tensor(0.0, dtype=torch.float32, device=step_device(p))}
        state.update({name: torch.zeros_like(p, dtype=self.state_dtype(name, p), memory_format=torch.preserve_format)
                      for name in self.state_names})
        return state

    @staticmethod
    def _process_value_according_to_param_policy(param, value, param_id, param_groups, key=None):
        """A loaded step counter goes where this machine's step keeps it (:func:`~.dispatch.step_device`)."""
        if key == "step":
            return value.to(dtype=torch.float32, device=step_device(param))
        return Optimizer._process_value_according_to_param_policy(param, value, param_id, param_groups, key)

    def load_state_dict(self, state_dict: dict) -> None:
        """torch casts loaded floating-point state to the parameter's dtype; restore the declared
        dtypes so a resumed run continues with exactly the state it saved. The state of another optimizer
        (other hyperparameter names or state tensors) is refused: torch would load it and step on it."""
        check_state_kind(self, state_dict, self.state_names, self.state_names)
        super().load_state_dict(state_dict)
        for p, state in self.state.items():
            for name in self.state_names:
                if name in state:
                    state[name] = state[name].to(self.state_dtype(name, p))

    def _gather(self, group: dict) -> list[list[torch.Tensor]]:
        """The group's rows with a gradient, as lists: params, grads, each state, step counters."""
        lists: list[list[torch.Tensor]] = [[] for _ in range(len(self.state_names) + 3)]
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise RuntimeError(
                    f"{type(self).__name__} does not support sparse gradients; use a dense embedding "
                    "(nn.Embedding(sparse=False)) or torch.optim.SparseAdam for that parameter."
                )
            state = self.state[p]
            if not state:  # lazy creation: FSDP2 swaps parameters for sharded DTensors after construction
                state.update(self._init_state(p))
            for column, tensor in zip(lists, (p, p.grad, *(state[n] for n in self.state_names), state["step"])):
                column.append(tensor)
        return lists

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None):
        """Perform one optimization step; ``closure`` re-evaluates the model and returns the loss."""
        loss = closure_loss(closure)
        if "_hyper_tensors" not in self.__dict__:  # not in the pickled state: created on first use
            self._hyper_tensors = HyperTensors()
        compiled = []
        for index, group in enumerate(self.param_groups):
            lists = self._gather(group)
            if not lists[0]:
                continue
            hyper = self.rule_hyperparameters(group)
            values = self.rule.tensor_hyper(**hyper)
            compiled += self.rule.dispatch(
                lists, hyper, foreach=group.get("foreach"), fused=group.get("fused"),
                hyper_tensor=lambda device, index=index, values=values: self._hyper_tensors.get(index, values, device))
        self.rule.run_compiled(compiled)
        return loss

