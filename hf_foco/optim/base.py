"""What hf_foco's optimizers share. For the elementwise ones' implementations: the parameter dtypes they keep
exactly, grouping of tensor lists, fp32 views of low-precision parameters, the reused scratch of the chunked
multi-tensor steps. For the matrix optimizers that train the other parameters with AdamW (K-FAC, FOP, Muon):
:func:`split_groups` and :func:`adamw_step`. For all: :func:`closure_loss`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import torch
from torch.optim.adamw import adamw

# Parameter dtypes the steps keep exactly (they compute in fp32 and write back once).
PARAM_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def closure_loss(closure: Callable[[], float] | None):
    """The loss ``closure`` returns, evaluated with autograd on inside a no-grad ``step`` (None without one)."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


def split_groups(params: Iterable, chosen: set[int], settings: Callable[[bool, dict], dict]) -> list[dict]:
    """Parameter groups split in two: each incoming group (or the one group of a plain parameter list) gives
    a group of its parameters whose ``id`` is in ``chosen`` and one of the others (either left out when
    empty), each updated with ``settings(is_chosen, incoming_group)``; ``param_names`` follow their
    parameters."""
    groups = [{**item, "params": list(item["params"])} if isinstance(item, dict) else item for item in params]
    if groups and not isinstance(groups[0], dict):
        groups = [{"params": groups}]
    out = []
    for group in groups:
        names = group.get("param_names")
        for is_chosen in (True, False):
            keep = [i for i, p in enumerate(group["params"]) if (id(p) in chosen) == is_chosen]
            if keep:
                new = {**group, "params": [group["params"][i] for i in keep], **settings(is_chosen, group)}
                if names is not None:
                    new["param_names"] = [names[i] for i in keep]
                out.append(new)
    return out


def adamw_step(group: dict, state: dict) -> None:
    """torch's AdamW step (its functional form, as ``torch.optim.AdamW`` calls it) on the parameters of
    ``group`` that have a gradient, with their state created lazily in ``state`` (the optimizer's)."""
    params = [p for p in group["params"] if p.grad is not None]
    for p in params:
        if not state[p]:
            state[p]["step"] = torch.tensor(0.0)
            state[p]["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state[p]["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
    if not params:
        return
    states = [state[p] for p in params]
    beta1, beta2 = group["betas"]
    adamw(params, [p.grad for p in params], [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states], [],
          [s["step"] for s in states], amsgrad=False, beta1=beta1, beta2=beta2, lr=group["lr"],
          weight_decay=group["weight_decay"], eps=group["eps"], maximize=False)


def group_rows(tensorlists: list[list[torch.Tensor]], keys: list) -> dict:
    """key -> the sublists of ``tensorlists`` whose rows have that key (``keys[i]`` is row i's), in order."""
    groups: dict = {}
    for row, key in zip(zip(*tensorlists), keys):
        columns = groups.setdefault(key, [[] for _ in tensorlists])
        for column, tensor in zip(columns, row):
            column.append(tensor)
    return groups


def group_by_device_and_dtype(tensorlists: list[list[torch.Tensor]]):
    """The sublists of ``tensorlists`` whose rows share the parameter's (the first list's) device and dtype.

    ``torch._foreach_*`` kernels take their fast path on lists of one device and dtype. Unlike torch's
    private helper, states may have their own dtypes (foco keeps bf16/fp16 states next to fp32 weights).
    """
    return group_rows(tensorlists, [(p.device, p.dtype) for p in tensorlists[0]]).values()


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


def step_counts(steps: list[torch.Tensor]) -> list[float]:
    """The values of 0-d step counters, read with one transfer per device (a step counter on a GPU costs a
    synchronisation to read)."""
    counts: list[float] = [0.0] * len(steps)
    for device in {s.device for s in steps}:
        rows = [i for i, s in enumerate(steps) if s.device == device]
        for i, value in zip(rows, torch.stack([steps[i] for i in rows]).tolist()):
            counts[i] = value
    return counts


def group_by_step(tensorlists: list[list[torch.Tensor]]):
    """Yield ``(columns, step)`` for each group of rows sharing device, parameter dtype and step count, the
    step counters being the last list: a multi-tensor step then sees one step count per group, so its bias
    corrections are plain scalars."""
    keys = [(p.device, p.dtype, count) for p, count in zip(tensorlists[0], step_counts(tensorlists[-1]))]
    for (_, _, count), columns in group_rows(tensorlists, keys).items():
        yield columns, count


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
    """
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
