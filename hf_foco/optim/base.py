"""The shared skeleton of hf_foco's elementwise optimizers.

Subclasses declare their state tensors and hand the gathered lists to a public functional update rule, the way
``torch.optim.AdamW`` hands them to ``adamw()``: the class only collects parameters and creates state
lazily; the function picks a single-tensor, multi-tensor (``torch._foreach_*``) or fused implementation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch.optim import Optimizer

from .state import check_state_kind

# Parameter dtypes the steps keep exactly (they compute in fp32 and write back once).
PARAM_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


class ElementwiseOptimizer(Optimizer):
    """Base for optimizers whose update is elementwise (FOCUS, foco, Signum, Lion).

    Subclasses set ``state_names`` (the per-parameter tensors besides ``step``; fp32 unless ``state_dtype``
    says otherwise) and implement ``_apply(group, params, grads, states, steps)``, which calls the rule.
    Because the update is elementwise it works unchanged on FSDP2's sharded DTensor parameters and on
    DeepSpeed's flat shards.
    """

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

    def _init_state(self, p: torch.Tensor) -> dict[str, torch.Tensor]:
        return {name: torch.zeros_like(p, dtype=self.state_dtype(name, p), memory_format=torch.preserve_format)
                for name in self.state_names}

    def load_state_dict(self, state_dict: dict) -> None:
        """torch casts loaded floating-point state to the parameter's dtype; restore the declared
        dtypes so a resumed run continues with exactly the state it saved. The state of another optimizer
        (other hyperparameter names or state tensors) is refused: torch would load it and step on it."""
        self._check_same_kind(state_dict)
        super().load_state_dict(state_dict)
        for p, state in self.state.items():
            for name in self.state_names:
                if name in state:
                    state[name] = state[name].to(self.state_dtype(name, p))

    def _check_same_kind(self, state_dict: dict) -> None:
        check_state_kind(self, state_dict, self.state_names, self.state_names)

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
        loss = closure_loss(closure)
        for group in self.param_groups:
            params, grads, states, steps = self._gather(group)
            if params:
                self._apply(group, params, grads, states, steps)
        return loss


def closure_loss(closure: Callable[[], float] | None):
    """The loss ``closure`` returns, evaluated with autograd on inside a no-grad ``step`` (None without one)."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


def _device_and_dtype(row: tuple[torch.Tensor, ...]) -> tuple:
    return row[0].device, row[0].dtype


def group_by_device_and_dtype(tensorlists: list[list[torch.Tensor]], key=_device_and_dtype):
    """Yield the sublists of ``tensorlists`` whose rows share ``key`` (by default the parameter's
    device and dtype, the parameter being the first list).

    ``torch._foreach_*`` kernels take their fast path on lists of one device and dtype. Unlike torch's
    private helper, states may have their own dtypes (foco keeps bf16/fp16 states next to fp32 weights).
    """
    groups: dict[tuple, list[list[torch.Tensor]]] = {}
    for row in zip(*tensorlists):
        columns = groups.setdefault(key(row), [[] for _ in tensorlists])
        for column, tensor in zip(columns, row):
            column.append(tensor)
    yield from groups.values()


def default_foreach(params: list[torch.Tensor]) -> bool:
    """torch's rule (the multi-tensor path whenever every tensor is a native CPU/CUDA tensor), and
    contiguous: the chunked multi-tensor steps walk flat views (:func:`scratch_chunks`)."""
    return all((type(p) is torch.Tensor or type(p) is torch.nn.Parameter) and p.is_contiguous() for p in params)


def as_fp32(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """fp32 versions of ``tensors`` (the same objects when already fp32)."""
    return [t if t.dtype == torch.float32 else t.float() for t in tensors]


@contextmanager
def fp32_params(params: list[torch.Tensor]) -> Iterator[list[torch.Tensor]]:
    """Update low-precision parameters through fp32 copies, written back once at the end.

    bf16 cannot represent 1 - lr*wd (it rounds to 1) nor many sums theta - lr*u, and foreach kernels
    round scalars to the list's dtype: without this, weight decay silently vanishes in bf16.
    """
    theta = as_fp32(params)
    yield theta
    for p, t in zip(params, theta):
        if t is not p:
            p.copy_(t)


def step_key(row: tuple[torch.Tensor, ...]) -> tuple:
    """Grouping key (device, dtype, step) for rows whose last column is the step counter: a multi-tensor
    step then sees one step count per group, so bias corrections are plain scalars."""
    return row[0].device, row[0].dtype, row[-1].item()


# Elements per scratch buffer of a chunked multi-tensor step (16 MB each in fp32), reused chunk after chunk.
CHUNK_NUMEL = 1 << 22


def scratch_chunks(rows: list[tuple[torch.Tensor, ...]], n_scratch: int):
    """Walk same-shaped tensors (one row per parameter) chunk by chunk, with fp32 scratch to compute in.

    Yields ``(columns, scratch)``: ``columns[j]`` lists flat pieces of the rows' j-th tensors, together at
    most ``CHUNK_NUMEL`` elements (a larger tensor is cut into several pieces), and ``scratch[k]`` lists
    same-sized pieces of the k-th of ``n_scratch`` fp32 buffers. Why: on a CPU a fresh full-size temporary
    costs more in page faults than the elementwise arithmetic on it (an out-of-place ``x.sign()`` of a large
    tensor is many times slower than the in-place ``x.sign_()``), so a multi-tensor step runs fastest
    entirely in place, in reused scratch.
    FSDP2 DTensors are walked through their local shards (the update is elementwise).
    """
    rows = [[t.to_local() if hasattr(t, "to_local") else t for t in row] for row in rows]
    if not all(t.is_contiguous() for row in rows for t in row):
        raise ValueError("foreach=True needs contiguous parameters and gradients (e.g. not channels_last); leave "
                         "foreach unset to use the per-tensor step for them.")
    size = max(1, min(sum(row[0].numel() for row in rows), CHUNK_NUMEL))
    buffers = torch.empty(n_scratch, size, dtype=torch.float32, device=rows[0][0].device)
    for columns in _flat_chunks(rows, size):
        bounds, start = [], 0
        for piece in columns[0]:
            bounds.append((start, start + piece.numel()))
            start += piece.numel()
        yield columns, [[buffer[a:b] for a, b in bounds] for buffer in buffers]


def _flat_chunks(rows: list[list[torch.Tensor]], size: int):
    """Batches of flat pieces of the rows' tensors, at most ``size`` elements per batch."""
    batch, filled = [[] for _ in rows[0]], 0
    for row in rows:
        flats = [t.view(-1) for t in row]
        numel = flats[0].numel()
        for start in range(0, numel, size):
            length = min(size, numel - start)
            if filled + length > size:
                yield batch
                batch, filled = [[] for _ in rows[0]], 0
            for column, flat in zip(batch, flats):
                column.append(flat[start:start + length])
            filled += length
    if filled:
        yield batch
