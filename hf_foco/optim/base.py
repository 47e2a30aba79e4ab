"""The shared skeleton of hf_foco's elementwise optimizers.

Subclasses declare their state tensors and hand the gathered lists to a functional update rule, the way
``torch.optim.AdamW`` does: the class only collects parameters, creates state lazily and dispatches to a
single-tensor or multi-tensor (``torch._foreach_*``) implementation of the rule.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.optim import Optimizer


class ElementwiseOptimizer(Optimizer):
    """Base for optimizers whose update is elementwise (FOCUS, foco, Signum, Lion).

    Subclasses set ``state_names`` (the per-parameter tensors besides ``step``), implement
    ``_init_state(p)`` returning those tensors, and ``_apply(group, params, grads, states, steps)``.
    Because the update is elementwise it works unchanged on FSDP2's sharded DTensor parameters and on
    DeepSpeed's flat shards.
    """

    state_names: tuple[str, ...] = ()

    def _init_state(self, p: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def _apply(self, group: dict, params, grads, states: dict[str, list], steps: list) -> None:
        raise NotImplementedError

    def _gather(self, group: dict):
        params, grads, steps = [], [], []
        states: dict[str, list] = {name: [] for name in self.state_names}
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise RuntimeError(
                    f"{type(self).__name__} does not support sparse gradients; use a dense embedding "
                    "(nn.Embedding(sparse=False)) or torch.optim.SparseAdam for that parameter."
                )
            state = self.state[p]
            if not state:
                # Lazy creation: FSDP2 swaps parameters for sharded DTensors after construction.
                state["step"] = torch.tensor(0.0, dtype=torch.float32)
                state.update(self._init_state(p))
            params.append(p)
            grads.append(p.grad)
            steps.append(state["step"])
            for name in self.state_names:
                states[name].append(state[name])
        return params, grads, states, steps

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None):
        """Perform one optimization step; ``closure`` re-evaluates the model and returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads, states, steps = self._gather(group)
            if params:
                self._apply(group, params, grads, states, steps)
        return loss


def group_by_device_and_dtype(tensorlists: list[list[torch.Tensor]]):
    """Yield per-(device, dtype) sublists of ``tensorlists`` (the first list decides the grouping).

    ``torch._foreach_*`` kernels need tensors of one device and dtype; this is torch's own grouping.
    """
    grouped = Optimizer._group_tensors_by_device_and_dtype(tensorlists)
    for (_device, _dtype), (lists, _indices) in grouped.items():
        yield lists


def default_foreach(params: list[torch.Tensor]) -> bool:
    """torch's rule: use the multi-tensor path whenever every tensor is a native CPU/CUDA tensor."""
    return all(type(p) is torch.Tensor or type(p) is torch.nn.Parameter for p in params)
