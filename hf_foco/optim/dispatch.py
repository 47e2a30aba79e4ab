"""Which implementation runs an elementwise optimizer step, with torch's meanings of ``foreach`` and ``fused``.

Every elementwise rule (foco, FOCUS, Signum, Lion) has up to four implementations of one update, held by an
:class:`ElementwiseRule`:

* ``single``: one tensor at a time, the reference (``foreach=False``);
* ``multi``: lists of tensors through ``torch._foreach_*`` (``foreach=True``);
* fused, one pass over memory per tensor (``fused=True``): on CPU the C++ kernels of
  :mod:`~hf_foco.optim.cpu_kernels`, on CUDA the rule's multi-tensor expression compiled by ``torch.compile``
  (:data:`FUSED_IMPLEMENTATIONS`);
* unset (``None`` for both): the fastest available, row by row: fused where it can take the row, else
  ``multi`` for plain contiguous tensors, else ``single``.

``fused=True`` on rows no fused step can take is an error naming why; ``fused`` and ``foreach`` both true is
an error. FSDP2's DTensor parameters are stepped through their local shards (the update is elementwise, so
each rank updates its own shard alone) on every path but ``single``, which runs DTensor ops as given.

The compiled step takes its hyperparameters as a tensor on the parameters' device (refreshed with ``fill_``
when a value changes: a kernel argument, no host-to-device copy) and its step counters on the device (bias
corrections computed there), so a step makes no host synchronisation and a learning-rate change does not
recompile. An optimizer batches its compiled rows over all parameter groups into one call per step.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from . import cpu_kernels
from .base import default_foreach
from .validation import check_fused_or_foreach

# The fused implementation for each device type: "kernels" (the C++ CPU kernels) or "compiled" (torch.compile).
FUSED_IMPLEMENTATIONS = {"cpu": "kernels", "cuda": "compiled"}


@contextmanager
def fused_implementation(device_type: str, implementation: str) -> Iterator[None]:
    """Step ``device_type`` tensors with another fused implementation inside the block (tests and benchmarks
    run the compiled CUDA step on CPU tensors this way, through Inductor's CPU backend)."""
    if implementation not in ("kernels", "compiled"):
        raise ValueError(f"Unknown fused implementation {implementation!r}: choose 'kernels' or 'compiled'.")
    before = FUSED_IMPLEMENTATIONS.get(device_type)
    FUSED_IMPLEMENTATIONS[device_type] = implementation
    try:
        yield
    finally:
        if before is None:
            del FUSED_IMPLEMENTATIONS[device_type]
        else:
            FUSED_IMPLEMENTATIONS[device_type] = before


def step_device(p: torch.Tensor) -> torch.device:
    """Where the step counter of parameter ``p`` lives: on its device where the compiled step runs (it counts
    and bias-corrects there), else on the CPU (the other paths read it as a Python number)."""
    return p.device if FUSED_IMPLEMENTATIONS.get(p.device.type) == "compiled" else torch.device("cpu")


@functools.cache
def compile_unavailable(device_type: str) -> str | None:
    """Why ``torch.compile`` cannot fuse a step on ``device_type`` here, or None when it can."""
    if not torch._dynamo.is_dynamo_supported():
        return f"torch.compile is not supported on this Python ({torch.__version__})"
    if device_type == "cuda":
        from torch.utils._triton import has_triton

        return None if has_triton() else "Triton is not installed (torch.compile needs it on CUDA)"
    return None if device_type == "cpu" else f"no compiled step for {device_type} tensors"


@functools.cache
def _warn_fallback(reason: str) -> None:
    warnings.warn(f"hf_foco: fused optimizer steps unavailable ({reason}); using the multi-tensor (foreach) steps, "
                  "which compute the same update more slowly.", stacklevel=5)


def local_shards(tensorlists: list[list[torch.Tensor]]) -> list[list[torch.Tensor]]:
    """The lists with every DTensor replaced by its local shard (the same storage, updated in place)."""
    return [[t.to_local() if hasattr(t, "to_local") else t for t in column] for column in tensorlists]


def _rows(tensorlists: list[list[torch.Tensor]], keep: Sequence[bool]) -> list[list[torch.Tensor]]:
    return [[t for t, k in zip(column, keep) if k] for column in tensorlists]


class HyperTensors:
    """Hyperparameters as 1-D fp32 tensors on the device, one per key, rewritten only where a value changed.

    ``fill_`` with a Python number launches a kernel that takes the number as an argument: unlike building a
    tensor from a list on the host and copying it over, it never waits for the device."""

    def __init__(self):
        self._cache: dict = {}

    def get(self, key, values: Sequence[float], device: torch.device) -> torch.Tensor:
        cached = self._cache.get((key, device))
        if cached is None or len(cached[0]) != len(values):
            tensor = torch.empty(len(values), dtype=torch.float32, device=device)
            cached = self._cache[(key, device)] = [[None] * len(values), tensor]
        old, tensor = cached
        for i, (before, value) in enumerate(zip(old, values)):
            if before != value:
                tensor[i].fill_(value)
                old[i] = value
        return tensor


@dataclass(frozen=True)
class CompiledBatch:
    """Rows for the compiled step: tensor lists (params, grads, states..., steps), the hyperparameter tensor,
    and the hyperparameters the graph specialises on (strings such as FOCUS's decay order)."""

    tensorlists: list[list[torch.Tensor]]
    hyper: torch.Tensor
    static: tuple = ()


@dataclass(frozen=True)
class ElementwiseRule:
    """One elementwise update rule and its implementations (each computes the same update).

    ``single``, ``multi``: ``fn(params, grads, *states, steps, **hyper)``. ``kernel``: ``fn(module, columns,
    step, **hyper)`` runs the C++ kernel on rows at one step count. ``compiled``:
    ``fn(params, grads, *states, steps, hyper, *static)``, traced by ``torch.compile``; ``hyper`` is the
    tensor of ``tensor_hyper(**hyper)`` and ``static`` the values of ``static_hyper``.
    """

    name: str
    state_dtypes: tuple[torch.dtype, ...]
    single: Callable
    multi: Callable
    kernel: Callable
    compiled: Callable
    tensor_hyper: Callable[..., tuple[float, ...]]
    static_hyper: tuple[str, ...] = ()

    def step(self, tensorlists: list[list[torch.Tensor]], hyper: dict, *, foreach: bool | None = None,
             fused: bool | None = None) -> None:
        """One step of the rows ``tensorlists`` (params, grads, states..., steps), compiled rows included."""
        hypers = HyperTensors()
        pending = self.dispatch(tensorlists, hyper, foreach=foreach, fused=fused,
                                hyper_tensor=lambda device: hypers.get(None, self.tensor_hyper(**hyper), device))
        self.run_compiled(pending)

    def dispatch(self, tensorlists: list[list[torch.Tensor]], hyper: dict, *, foreach: bool | None,
                 fused: bool | None, hyper_tensor: Callable[[torch.device], torch.Tensor]) -> list[CompiledBatch]:
        """Step every row but those for the compiled step, which are returned (batched by the caller into one
        call per step with :meth:`run_compiled`); the module docstring says which row goes where."""
        check_fused_or_foreach(self.name, fused, foreach)
        if foreach is False and not fused:
            self.single(*tensorlists, **hyper)
            return []
        tensorlists = local_shards(tensorlists)
        pending = []
        if fused if fused is not None else not foreach:
            pending, tensorlists = self._fused(tensorlists, hyper, required=bool(fused), hyper_tensor=hyper_tensor)
        if tensorlists[0]:
            use_foreach = default_foreach(tensorlists[0]) if foreach is None else foreach
            (self.multi if use_foreach else self.single)(*tensorlists, **hyper)
        return pending

    def _fused(self, tensorlists, hyper, *, required: bool, hyper_tensor):
        """Run the rows the CPU kernels take; return (the compiled batches, the rows no fused step took).
        With ``required``, nothing is stepped unless every row has a fused step."""
        params = tensorlists[0]
        compiled, kernel, reasons = [False] * len(params), [False] * len(params), {}
        module = None
        for device in dict.fromkeys(p.device for p in params):
            on = [p.device == device for p in params]
            implementation = FUSED_IMPLEMENTATIONS.get(device.type)
            reason = None
            if implementation == "compiled":
                reason = compile_unavailable(device.type)
                compiled = compiled if reason else [c or o for c, o in zip(compiled, on)]
            elif implementation == "kernels":
                module = cpu_kernels.load()
                reason = module if isinstance(module, str) else None
                if reason is None:
                    kernel = [k or (o and cpu_kernels.takes(row, self.state_dtypes))
                              for k, o, row in zip(kernel, on, zip(*tensorlists))]
            else:
                reason = f"no fused step for {device.type} tensors"
            if reason is not None:
                reasons[device.type] = reason
        rest = _rows(tensorlists, [not (c or k) for c, k in zip(compiled, kernel)])
        if rest[0] and required:
            row = next(zip(*rest))
            why = reasons.get(row[0].device.type) or cpu_kernels.refusal(row, self.state_dtypes)
            raise ValueError(f"{self.name}: fused=True, but no fused step takes {len(rest[0])} of the {len(params)} "
                             f"tensors ({why}); leave fused unset to use the fastest step available for each tensor.")
        for device_type, reason in reasons.items():
            if FUSED_IMPLEMENTATIONS.get(device_type) is not None:
                _warn_fallback(reason)
        for columns, step in cpu_kernels.by_step(_rows(tensorlists, kernel)):
            self.kernel(module, columns, step, **hyper)
        static = tuple(hyper[name] for name in self.static_hyper)
        pending = [CompiledBatch(_rows(tensorlists, [c and p.device == device for c, p in zip(compiled, params)]),
                                 hyper_tensor(device), static)
                   for device in dict.fromkeys(p.device for c, p in zip(compiled, params) if c)]
        return pending, rest

    def run_compiled(self, batches: list[CompiledBatch]) -> None:
        """Run the compiled step on every batch in one call (compiled on first use, cached per rule)."""
        if not batches:
            return
        with warnings.catch_warnings():
            # Inductor's CPU backend notes that a fused kernel mixes foco's bf16 momentum and fp16 pull; by design.
            warnings.filterwarnings("ignore", message="bf16 and fp16 are mixed in the scheduler node")
            self.compiled_step([(b.tensorlists, b.hyper, b.static) for b in batches])

    @functools.cached_property
    def compiled_step(self) -> Callable:
        """The compiled function over all batches of a step (built on first use; compiles on its first call)."""
        return torch.compile(self._all_batches, fullgraph=True, dynamic=False)

    def _all_batches(self, batches) -> None:
        for tensorlists, hyper, static in batches:
            self.compiled(*tensorlists, hyper, *static)


# -- helpers the rules' compiled steps share --------------------------------------------------------------

def widen(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """fp32 values of ``tensors`` inside a compiled step (free there: the conversion fuses into the kernel)."""
    return [t.float() for t in tensors]


def lerp(start: list[torch.Tensor], end: list[torch.Tensor], weight: torch.Tensor) -> list[torch.Tensor]:
    """start + weight·(end − start) with a 0-d tensor weight (``torch.lerp``'s formula for weights below 0.5;
    its other branch rounds differently)."""
    return torch._foreach_add(start, torch._foreach_mul(torch._foreach_sub(end, start), weight))


def log_beta(beta: float) -> float:
    """log(beta) for a bias correction beta**t = exp(t·log beta) computed on the device (-inf for beta = 0)."""
    return math.log(beta) if beta > 0 else -math.inf
